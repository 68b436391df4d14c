"""One exception hierarchy for EZ Runner.

Every message says what was wrong and what to do next, so the CLI and the wizard only have to show
it. Subclasses group errors by area; callers catch ``EzRunnerError`` at the boundary.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path


class EzRunnerError(Exception):
    """Base class: ``str(error)`` is a complete, user-facing sentence with a next step.

    ``field`` is the stable key of the input at fault ("model", "gpu_memory", "max_model_len", "base_image",
    "output", "config.json", ...): the CLI turns it into the flag to fix, the wizard into the field's label.
    None when no single input is at fault (Docker is down, a hub does not answer). ``details`` are lines of
    output behind the error, oldest first (the last lines of a failed build), shown under the message.
    """

    #: short machine-readable code, used by the CLI's --json output and the wizard's translations
    code: str = "error"

    def __init__(
        self, message: str, *, hint: str | None = None, field: str | None = None, details: Sequence[str] = ()
    ) -> None:
        self.message = message
        self.hint = hint
        self.field = field
        self.details = tuple(details)
        super().__init__(message if not hint else f"{message} {hint}")


# MODEL REFERENCE AND HUB ERRORS


class InvalidReferenceError(EzRunnerError):
    code = "invalid_reference"


class ModelNotFoundError(EzRunnerError):
    code = "model_not_found"


class RevisionNotFoundError(EzRunnerError):
    code = "revision_not_found"


class GatedModelError(EzRunnerError):
    code = "gated_model"


class NoSafetensorsError(EzRunnerError):
    code = "no_safetensors"


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


# DOCKER, PACK AND RUN ERRORS


class DockerUnavailableError(EzRunnerError):
    code = "docker_unavailable"


class DockerTooOldError(EzRunnerError):
    code = "docker_too_old"


class BaseImageMissingError(EzRunnerError):
    code = "base_image_missing"


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


class ContainerConflictError(EzRunnerError):
    code = "container_exists"


class GpuUnavailableError(EzRunnerError):
    code = "gpu_unavailable"


class HealthTimeoutError(EzRunnerError):
    code = "health_timeout"


class ArtifactInvalidError(EzRunnerError):
    code = "artifact_invalid"


class CancelledError(EzRunnerError):
    code = "cancelled"


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


# FILE SYSTEM FAULTS, IN THE USER'S TERMS


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
