"""One exception hierarchy for EZ Runner.

Every message says what was wrong and what to do next, so the CLI and the wizard only have to show
it. Subclasses group errors by area; callers catch ``EzRunnerError`` at the boundary.
"""

from __future__ import annotations


class EzRunnerError(Exception):
    """Base class: ``str(error)`` is a complete, user-facing sentence with a next step."""

    #: short machine-readable code, used by the CLI's --json output and the wizard's translations
    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
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
