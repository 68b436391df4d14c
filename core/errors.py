"""One exception hierarchy for EZ Runner.

Every message says what was wrong and what to do next, so the CLI and the wizard only have to show
it. Subclasses group errors by area; callers catch ``EzRunnerError`` at the boundary.

Each error names the input at fault with a stable key from ``FIELDS`` (``error.field``; None when no single
input is at fault: Docker is down, a hub does not answer). The keys are the names of the inputs as the
product knows them, independent of how a front end spells them: the CLI maps each to its flag
(``ezrunner_ui.cli.common.FLAGS``), the wizard to its field label. Add a key here before raising with it
(tests/unit/test_error_fields.py holds every ``field=`` in the code to this set).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

# THE INPUTS AN ERROR CAN BE ABOUT

#: the model reference (hf:org/name, ms:org/name, org/name or a folder)
MODEL: Final = "model"
#: the branch, tag or commit of a hub model
REVISION: Final = "revision"
#: the GGUF quantization asked for
QUANT: Final = "quant"
#: the model's config.json (and the other small JSON files a model carries)
CONFIG: Final = "config"
#: the model's weight files (safetensors or GGUF headers, the shard index)
WEIGHTS: Final = "weights"
#: the described target: GPU preset name, GPU count, memory per GPU, compute capability, driver, GPU API
GPU_PRESET: Final = "gpu_preset"
GPUS: Final = "gpus"
GPU_MEMORY: Final = "gpu_memory"
COMPUTE_CAPABILITY: Final = "compute_capability"
DRIVER: Final = "driver"
GPU_API: Final = "gpu_api"
CPU_ONLY: Final = "cpu_only"
RAM: Final = "ram"
CPU_CORES: Final = "cpu_cores"
#: plan options
ENGINE: Final = "engine"
TENSOR_PARALLEL_SIZE: Final = "tensor_parallel_size"
MAX_MODEL_LEN: Final = "max_model_len"
GPU_MEMORY_UTILIZATION: Final = "gpu_memory_utilization"
DTYPE: Final = "dtype"
PORT: Final = "port"
BASE_IMAGE: Final = "base_image"
KV_CACHE_TYPE: Final = "kv_cache_type"
PARALLEL: Final = "parallel"
GGUF_PRE_TOKENIZER: Final = "gguf_pre_tokenizer"
API_KEY_ENV: Final = "api_key_env"
#: pack options: the archive path, its split size, a hand-edited Dockerfile
OUTPUT: Final = "output"
ARCHIVE_FORMAT: Final = "archive_format"
SPLIT: Final = "split"
DOCKERFILE: Final = "dockerfile"
#: EZ Runner's own data folder (EZRUNNER_HOME): history, build contexts, caches
HOME: Final = "home"
#: run: the archive to load and start, the health timeout, the container's network mode
ARCHIVE: Final = "archive"
TIMEOUT: Final = "timeout"
NETWORK: Final = "network"
#: generate: the image reference the manifests pull, the namespace; push: the registry reference
IMAGE: Final = "image"
NAMESPACE: Final = "namespace"
NODES: Final = "nodes"
DATA_PARALLEL_SIZE: Final = "data_parallel_size"
#: bench: the targets (archives or loaded images), the prompts file, the load it sends
BENCH_TARGET: Final = "bench_target"
PROMPTS: Final = "prompts"
REQUESTS: Final = "requests"
CONCURRENCY: Final = "concurrency"
MAX_TOKENS: Final = "max_tokens"
#: pack --sign: the SSH private key; verify / load.sh --verify: the allowed_signers file
SIGN_KEY: Final = "sign_key"
ALLOWED_SIGNERS: Final = "allowed_signers"
#: search
QUERY: Final = "query"
LIMIT: Final = "limit"

FIELDS: Final[frozenset[str]] = frozenset(
    {
        MODEL, REVISION, QUANT, CONFIG, WEIGHTS,
        GPU_PRESET, GPUS, GPU_MEMORY, COMPUTE_CAPABILITY, DRIVER, GPU_API, CPU_ONLY, RAM, CPU_CORES,
        ENGINE, TENSOR_PARALLEL_SIZE, MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION, DTYPE, PORT, BASE_IMAGE,
        KV_CACHE_TYPE, PARALLEL, GGUF_PRE_TOKENIZER, API_KEY_ENV,
        OUTPUT, ARCHIVE_FORMAT, SPLIT, DOCKERFILE, HOME, ARCHIVE, TIMEOUT, NETWORK, QUERY, LIMIT,
        IMAGE, NAMESPACE, NODES, DATA_PARALLEL_SIZE, SIGN_KEY, ALLOWED_SIGNERS,
        BENCH_TARGET, PROMPTS, REQUESTS, CONCURRENCY, MAX_TOKENS,
    }
)  # fmt: skip


class EzRunnerError(Exception):
    """Base class: ``str(error)`` is a complete, user-facing sentence with a next step.

    ``field`` is the stable key (one of ``FIELDS``) of the input at fault: the CLI turns it into the flag to
    fix, the wizard into the field's label; None when no single input is at fault (Docker is down).
    ``details`` are lines of output behind the error, oldest first (the last lines of a failed build).
    """

    #: short machine-readable code, used by the CLI's --json output and the wizard's translations
    code: str = "error"
    #: the input errors of this class are about unless the raiser names another
    default_field: str | None = None

    def __init__(
        self, message: str, *, hint: str | None = None, field: str | None = None, details: Sequence[str] = ()
    ) -> None:
        self.message = message
        self.hint = hint
        self.field = field if field is not None else self.default_field
        self.details = tuple(details)
        super().__init__(message if not hint else f"{message} {hint}")


# MODEL REFERENCE AND HUB ERRORS


class InvalidReferenceError(EzRunnerError):
    code = "invalid_reference"
    default_field = MODEL


class ModelNotFoundError(EzRunnerError):
    code = "model_not_found"
    default_field = MODEL


class RevisionNotFoundError(EzRunnerError):
    code = "revision_not_found"
    default_field = REVISION


class GatedModelError(EzRunnerError):
    code = "gated_model"
    default_field = MODEL


class NoSafetensorsError(EzRunnerError):
    code = "no_safetensors"
    default_field = MODEL


class HubUnreachableError(EzRunnerError):
    code = "hub_unreachable"


class DownloadError(EzRunnerError):
    code = "download_failed"


class HubAnswerError(EzRunnerError):
    """A hub answered with something no honest hub sends: a file name that leaves the model folder, a body
    that is not what its headers declare. Never retried into a pack."""

    code = "hub_answer_invalid"


class ChecksumMismatchError(EzRunnerError):
    code = "checksum_mismatch"
    default_field = MODEL


# HARDWARE AND PLANNING ERRORS


class InvalidTargetError(EzRunnerError):
    code = "invalid_target"


class InvalidOptionsError(EzRunnerError):
    code = "invalid_options"


class PlanError(EzRunnerError):
    code = "plan_failed"


class ModelConfigError(PlanError):
    """config.json contradicts itself (a hybrid layer layout that does not cover every layer, a state layer
    without its state dimensions), so the model's memory cannot be sized."""

    code = "model_config_invalid"
    default_field = CONFIG


# DOCKER, PACK AND RUN ERRORS


class DockerUnavailableError(EzRunnerError):
    code = "docker_unavailable"


class DockerTooOldError(EzRunnerError):
    code = "docker_too_old"


class BaseImageMissingError(EzRunnerError):
    code = "base_image_missing"
    default_field = BASE_IMAGE


class BuildFailedError(EzRunnerError):
    code = "build_failed"


class ExportFailedError(EzRunnerError):
    code = "export_failed"


class LayerCacheUnusableError(ExportFailedError):
    """The engine's `docker save` output cannot fill the runtime-layer cache (the fast path falls back)."""

    code = "layer_cache_unusable"


class DiskSpaceError(EzRunnerError):
    code = "disk_full"


class NotWritableError(EzRunnerError):
    """A folder EZ Runner must write to (EZRUNNER_HOME, the output's folder) refuses writes."""

    code = "not_writable"


class PortInUseError(EzRunnerError):
    code = "port_in_use"
    default_field = PORT


class ContainerConflictError(EzRunnerError):
    code = "container_exists"


class GpuUnavailableError(EzRunnerError):
    code = "gpu_unavailable"


class HealthTimeoutError(EzRunnerError):
    code = "health_timeout"


class ArtifactInvalidError(EzRunnerError):
    code = "artifact_invalid"
    default_field = ARCHIVE


class TargetNotFoundError(EzRunnerError):
    """A bench target that is neither an archive on disk nor an image the engine has loaded."""

    code = "target_not_found"
    default_field = BENCH_TARGET


class ServerCheckError(EzRunnerError):
    """A started server answered its health check but not a chat request (`run --check`, bench)."""

    code = "server_check_failed"


class SignatureError(EzRunnerError):
    """An archive's signature is missing, does not verify, or cannot be made (``core.signing``)."""

    code = "signature_invalid"


class CancelledError(EzRunnerError):
    code = "cancelled"


# REGISTRY ERRORS (`ezrunner push`)


class RegistryError(EzRunnerError):
    """The registry refused or broke a push (a blob or manifest rejected, an unexpected answer)."""

    code = "registry_error"


class RegistryAuthError(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we sent."""

    code = "registry_auth_failed"


class RegistryUnreachableError(RegistryError):
    """No HTTP answer from the registry: wrong address, down, TLS versus plain HTTP, a dropped connection."""

    code = "registry_unreachable"


class RegistryBusyError(RegistryError):
    """The registry answered 5xx or 429: worth trying again later."""

    code = "registry_busy"


class LlamaCppSourceError(EzRunnerError):
    """The pinned llama.cpp source (for the converter and the offline image) could not be had."""

    code = "llamacpp_source_unavailable"


class ConverterMissingError(EzRunnerError):
    """The workstation lacks the Python packages llama.cpp's GGUF converter imports."""

    code = "converter_missing"


class ConversionError(EzRunnerError):
    """llama.cpp's converter or llama-quantize failed on this model."""

    code = "conversion_failed"


class InvalidGgufError(EzRunnerError):
    """A GGUF file or file set that llama.cpp cannot use: a broken or hostile header, missing split parts,
    or an architecture the pinned llama.cpp build does not know."""

    code = "invalid_gguf"
    default_field = WEIGHTS


# FILE SYSTEM FAULTS, IN THE USER'S TERMS


_FILE_SYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def is_file_system_error(error: OSError) -> bool:
    """Whether ``error`` is about a file or folder (it names one, or it is a disk or permission fault), not a
    socket or a process."""
    if isinstance(error, ConnectionError | TimeoutError | ProcessLookupError | ChildProcessError):
        return False
    return error.filename is not None or error.errno in _FILE_SYSTEM_ERRNOS


def from_os_error(
    error: OSError, *, doing: str, path: Path | str | None = None, field: str | None = None
) -> EzRunnerError:
    """The ``EzRunnerError`` for an ``OSError`` met while ``doing`` something ("writing the archive"):
    the cause named as the file system reports it (disk full, read-only, permission denied), with the path."""
    where = path if path is not None else error.filename
    at = f" at {where}" if where else ""
    number = error.errno
    if number in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError(
            f"The disk is full{at} while {doing}.",
            hint="Free some space there (or write elsewhere with -o /bigger/disk/model.tar), then try again.",
            field=field,
        )
    if number == errno.EROFS:
        return NotWritableError(
            f"The file system{at} is mounted read-only, so EZ Runner cannot write there while {doing}.",
            hint="Choose a folder on a writable disk (or set EZRUNNER_HOME to one), then try again.",
            field=field,
        )
    if number in (errno.EACCES, errno.EPERM):
        return NotWritableError(
            f"Permission denied{at} while {doing}.",
            hint="Choose a folder your user may write to (or fix its permissions), then try again.",
            field=field,
        )
    reason = error.strerror or type(error).__name__
    return EzRunnerError(
        f"The file system failed{at} while {doing}: {reason}.",
        hint="Check the disk and the path, then try again.",
        field=field,
    )


def check_writable_dir(*, path: Path, field: str, doing: str) -> None:
    """Raise the ``from_os_error`` error when files cannot be made in ``path`` (or, while it does not exist yet,
    in its nearest existing parent, where it would be made): read-only mounts, permissions, a file in the way.

    A file is made and removed at once, so nothing is left behind; it runs before any download or build, so
    the error names the real cause instead of a failure minutes later."""
    existing = Path(os.path.abspath(path.expanduser()))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        handle, name = tempfile.mkstemp(prefix=".ezrunner-write-check-", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise from_os_error(error, doing=doing, path=existing, field=field) from error
