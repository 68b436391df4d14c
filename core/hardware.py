"""GPU / CPU targets: ``detect_local()`` via NVML + psutil, presets, and validation of described servers.

A ``Target`` is the machine the image will run on. It comes from one of two places:

* ``detect_local()`` reads this machine (NVML for GPUs, psutil for CPU, RAM and disk). A machine with
  no GPU, no driver or no NVML library is a normal CPU-only result with a note saying why.
* ``describe_target()`` builds one from what the user says about an air-gapped server, usually a
  preset name from ``GPU_PRESETS``, and rejects impossible values with ``InvalidTargetError``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from core import errors
from core.errors import InvalidTargetError

GIB = 1 << 30
MIB = 1 << 20


GpuVendor = Literal["nvidia", "amd", "intel", "apple"]
# The GPU programming interface the server's engine uses (core.planning.Device, less "cpu").
GpuApi = Literal["cuda", "rocm", "vulkan"]
#: the interfaces each vendor's cards can be planned with, the vendor's own first
GPU_APIS_BY_VENDOR: Mapping[GpuVendor, tuple[GpuApi, ...]] = {
    "nvidia": ("cuda",),
    "amd": ("rocm", "vulkan"),
    "intel": ("vulkan",),
    "apple": (),
}


@dataclass(frozen=True)
class Gpu:
    name: str  # "NVIDIA H100 80GB HBM3"
    memory_bytes: int  # total memory as NVML reports it
    compute_capability: tuple[int, int]  # (9, 0)
    index: int | None = None  # NVML index when detected
    # Who made it: NVIDIA GPUs run CUDA images; AMD ones ROCm or Vulkan builds (compute_capability is then
    # only a placeholder, (0, 0)).
    vendor: GpuVendor = "nvidia"

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class Target:
    """The machine the image will run on. No GPUs means CPU only."""

    gpus: tuple[Gpu, ...] = ()
    driver_version: str | None = None  # "550.54.15"
    cuda_version: str | None = None  # the highest CUDA the driver supports, "12.4"
    cpu_cores: int | None = None
    ram_bytes: int | None = None
    free_disk_bytes: int | None = None  # where builds and exports go (detected only)
    origin: Literal["detected", "described"] = "described"
    label: str = ""  # "this machine" or "2 × A100 80GB"
    # Human sentences about what detection could not see ("no NVIDIA driver found ..."); empty when
    # everything was read. The wizard shows them under the detected target.
    notes: tuple[str, ...] = ()
    # The GPU interface asked for ("vulkan" for an AMD card without ROCm); None: the vendor's own.
    gpu_api: GpuApi | None = None

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def is_cpu_only(self) -> bool:
        return not self.gpus


# GPU PRESETS
#
# Memory is what NVML (and so `nvidia-smi --query-gpu=memory.total`) reports for the real card with
# current drivers, in MiB, taken from published nvidia-smi output. Several cards report a little less
# with ECC on or with older drivers (A100 40GB: 40536 MiB, V100 32GB: 32510 MiB before R5xx); the
# planner works from a fraction of the total, so the newer figure is used. The H100 SXM figure was
# also read on a real H100 with scripts/check-gpu (81,559 MiB = 85,520,809,984 bytes, driver 580.159.04).
# NVML's v2 memory info says 480 MiB of that is reserved by the driver: CUDA itself (torch.cuda.mem_get_info,
# which vLLM sizes its pool from) sees total − reserved = 85,017,493,504 bytes, the "79.18 GiB" of vLLM logs.
# Compute capabilities: https://developer.nvidia.com/cuda-gpus


@dataclass(frozen=True)
class GpuPreset:
    key: str  # "a100-80gb": what the CLI and the wizard pass
    display_name: str  # "NVIDIA A100 80GB": used for labels and the described Gpu's name
    nvml_name: str  # "NVIDIA A100-SXM4-80GB": what NVML calls the real card
    memory_bytes: int
    compute_capability: tuple[int, int]
    aliases: tuple[str, ...] = ()  # other spellings; matched after normalisation (see _normalise)
    vendor: GpuVendor = "nvidia"

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


def _preset(
    key: str,
    display_name: str,
    nvml_name: str,
    memory_mib: int,
    compute_capability: tuple[int, int],
    aliases: tuple[str, ...] = (),
    vendor: GpuVendor = "nvidia",
) -> GpuPreset:
    return GpuPreset(key, display_name, nvml_name, memory_mib * MIB, compute_capability, aliases, vendor)


# AMD and Intel cards have no compute capability: (0, 0) stands in, and the planner serves them with
# llama.cpp's ROCm build (AMD) or its Vulkan build (Intel, or AMD with gpu_api "vulkan"). Their memory is
# the vendor's data-sheet capacity in MiB (AMD Instinct MI300X 192 GB HBM3, MI250X 128 GB as two 64 GB
# GCDs that the driver lists as two GPUs, so the preset is one GCD, MI210 64 GB, Radeon RX 7900 XTX 24 GB,
# Radeon PRO W7900 48 GB: amd.com product pages; Intel Arc A770 16 GB: intel.com product page). Unlike the
# NVIDIA rows these were not read from a real card; rocm-smi reports a little less, which the planner's
# margins absorb.
_NO_CC = (0, 0)


# fmt: off
GPU_PRESETS: Mapping[str, GpuPreset] = {p.key: p for p in (
    # key, display name, NVML name, MiB as NVML reports it, compute capability, other spellings
    _preset("t4",        "NVIDIA T4",               "Tesla T4",                15360,  (7, 5)),
    _preset("v100-16gb", "NVIDIA V100 16GB",        "Tesla V100-SXM2-16GB",    16384,  (7, 0),
            ("v100 pcie 16gb",)),
    _preset("v100-32gb", "NVIDIA V100 32GB",        "Tesla V100-SXM2-32GB",    32768,  (7, 0),
            ("v100 pcie 32gb",)),
    _preset("a10",       "NVIDIA A10",              "NVIDIA A10",              23028,  (8, 6)),
    _preset("a10g",      "NVIDIA A10G",             "NVIDIA A10G",             23028,  (8, 6)),
    _preset("l4",        "NVIDIA L4",               "NVIDIA L4",               23034,  (8, 9)),
    _preset("l40s",      "NVIDIA L40S",             "NVIDIA L40S",             46068,  (8, 9)),
    _preset("a100-40gb", "NVIDIA A100 40GB",        "NVIDIA A100-SXM4-40GB",   40960,  (8, 0),
            ("a100 pcie 40gb",)),
    _preset("a100-80gb", "NVIDIA A100 80GB",        "NVIDIA A100-SXM4-80GB",   81920,  (8, 0),
            ("a100 80gb pcie",)),
    _preset("h100-sxm",  "NVIDIA H100 80GB SXM",    "NVIDIA H100 80GB HBM3",   81559,  (9, 0),
            ("h100", "h100 80gb", "h100 sxm5")),
    _preset("h100-pcie", "NVIDIA H100 80GB PCIe",   "NVIDIA H100 PCIe",        81559,  (9, 0),
            ("h100 80gb pcie",)),
    _preset("h100-nvl",  "NVIDIA H100 NVL 94GB",    "NVIDIA H100 NVL",         95830,  (9, 0)),
    _preset("h200",      "NVIDIA H200 141GB",       "NVIDIA H200",             143771, (9, 0), ("h200 sxm",)),
    _preset("rtx-3090",  "NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3090", 24576,  (8, 6), ("3090",)),
    _preset("rtx-4090",  "NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090", 24564,  (8, 9), ("4090",)),
    _preset("rtx-a6000", "NVIDIA RTX A6000",        "NVIDIA RTX A6000",        49140,  (8, 6), ("a6000",)),
    _preset("b200",      "NVIDIA B200 180GB",       "NVIDIA B200",             183359, (10, 0)),
    _preset("mi300x",    "AMD Instinct MI300X 192GB", "AMD Instinct MI300X",   196608, _NO_CC, (), "amd"),
    _preset("mi250x",    "AMD Instinct MI250X GCD 64GB", "AMD Instinct MI250X", 65536, _NO_CC,
            ("mi250x gcd",), "amd"),
    _preset("mi210",     "AMD Instinct MI210 64GB", "AMD Instinct MI210",      65536,  _NO_CC, (), "amd"),
    _preset("rx-7900-xtx", "AMD Radeon RX 7900 XTX", "AMD Radeon RX 7900 XTX", 24576, _NO_CC,
            ("7900 xtx", "7900xtx"), "amd"),
    _preset("w7900",     "AMD Radeon PRO W7900 48GB", "AMD Radeon PRO W7900",  49152,  _NO_CC,
            ("radeon pro w7900", "pro w7900"), "amd"),
    _preset("arc-a770",  "Intel Arc A770 16GB",     "Intel(R) Arc(TM) A770 Graphics", 16384, _NO_CC,
            ("a770", "arc a770 16gb"), "intel"),
)}
# fmt: on

# Names that fit two presets with different memory: asking for one is an error that names both,
# so nobody plans a 40 GB card as an 80 GB one.
_AMBIGUOUS_NAMES: Mapping[str, tuple[str, ...]] = {
    "a100": ("a100-40gb", "a100-80gb"),
    "v100": ("v100-16gb", "v100-32gb"),
}


def _normalise(name: str) -> str:
    """'NVIDIA A100 80GB', 'a100-80' and 'A100_80gb' all become 'a10080'."""
    text = name.lower()
    text = re.sub(r"\b(nvidia|tesla|geforce|quadro|amd|instinct|radeon|intel)\b|\((r|tm)\)", "", text)
    text = re.sub(r"(\d)\s*gb\b", r"\1", text)
    return re.sub(r"[^a-z0-9]", "", text)


def _build_preset_index() -> dict[str, GpuPreset]:
    index: dict[str, GpuPreset] = {}
    for preset in GPU_PRESETS.values():
        for spelling in (preset.key, preset.display_name, preset.nvml_name, *preset.aliases):
            index.setdefault(_normalise(spelling), preset)
    return index


_PRESET_INDEX = _build_preset_index()


def find_gpu_preset(*, name: str) -> GpuPreset | None:
    """The preset a key, alias, display name or NVML name means (case-insensitive), or None."""
    return _PRESET_INDEX.get(_normalise(name))


def resolve_gpu_preset(*, name: str) -> GpuPreset:
    """Like ``find_gpu_preset`` but raises ``InvalidTargetError`` listing the known presets."""
    normalised = _normalise(name)
    if normalised in _AMBIGUOUS_NAMES:
        choices = ", ".join(_AMBIGUOUS_NAMES[normalised])
        raise InvalidTargetError(
            f"gpu_preset '{name}' fits more than one card ({choices}).",
            hint="Name the memory size, for example 'a100-80gb'.",
            field=errors.GPU_PRESET,
        )
    preset = _PRESET_INDEX.get(normalised)
    if preset is None:
        raise InvalidTargetError(
            f"gpu_preset '{name}' is not a known GPU. Known presets: {', '.join(GPU_PRESETS)}.",
            hint="Pick one of them, or describe the card with gpu_memory_gib and compute_capability.",
            field=errors.GPU_PRESET,
        )
    return preset


# DRIVER → CUDA
#
# The lowest Linux x86_64 driver of each CUDA toolkit minor release (its GA row), from NVIDIA's CUDA
# Toolkit Release Notes, Table 3 "CUDA Toolkit and Corresponding Driver Versions":
# https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html
# A driver runs containers built for its CUDA version and older ones; the newest row it meets is the
# CUDA version it supports (what `nvidia-smi` prints as "CUDA Version" for release drivers).
DRIVER_CUDA_TABLE: tuple[tuple[str, str], ...] = (
    ("13.2", "595.45.04"),
    ("13.1", "590.44.01"),
    ("13.0", "580.65.06"),
    ("12.9", "575.51.03"),
    ("12.8", "570.26"),
    ("12.6", "560.28.03"),
    ("12.5", "555.42.02"),
    ("12.4", "550.54.14"),
    ("12.3", "545.23.06"),
    ("12.2", "535.54.03"),
    ("12.1", "530.30.02"),
    ("12.0", "525.60.13"),
    ("11.8", "520.61.05"),
    ("11.7", "515.43.04"),
    ("11.6", "510.39.01"),
    ("11.5", "495.29.05"),
    ("11.4", "470.42.01"),
    ("11.3", "465.19.01"),
    ("11.2", "460.27.03"),
    ("11.1", "455.23"),
    ("11.0", "450.36.06"),
    ("10.2", "440.33"),
    ("10.1", "418.39"),
    ("10.0", "410.48"),
)

_DRIVER_VERSION = re.compile(r"^\d{3,4}(\.\d{1,3}){1,2}$")
_COMPUTE_CAPABILITY = re.compile(r"^(\d{1,2})\.(\d)$")
# The oldest and newest compute capability major versions we accept (Kepler 3.x .. Blackwell 12.x)
_MIN_CC_MAJOR, _MAX_CC_MAJOR = 3, 12
_MAX_GPU_COUNT = 16
_MIN_GPU_GIB, _MAX_GPU_GIB = 1, 1024
# Upper bounds of a described server, far above any machine sold (the largest single-system-image servers
# hold 32 TiB of RAM and a few thousand cores): a value past them is a typo, not a plan.
MAX_RAM_GIB = 64 * 1024
MAX_CPU_CORES = 16384


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def cuda_version_for_driver(*, driver_version: str) -> str | None:
    """Highest CUDA version a Linux driver supports ("550.54.15" → "12.4"); None below CUDA 10.0.

    Raises ``InvalidTargetError`` when the text is not a driver version like "550.54.15".
    """
    text = driver_version.strip()
    if not _DRIVER_VERSION.match(text):
        raise InvalidTargetError(
            f"driver_version '{driver_version}' is not an NVIDIA driver version.",
            hint="Use the form shown by nvidia-smi, for example '550.54.15' or '570.26'.",
            field=errors.DRIVER,
        )
    version = _version_tuple(text)
    for cuda, minimum in DRIVER_CUDA_TABLE:
        if version >= _version_tuple(minimum):
            return cuda
    return None


def parse_compute_capability(*, text: str) -> tuple[int, int]:
    """'8.0' → (8, 0), validated to 3.0–12.x; raises ``InvalidTargetError`` otherwise."""
    match = _COMPUTE_CAPABILITY.match(text.strip())
    if not match or not _MIN_CC_MAJOR <= int(match.group(1)) <= _MAX_CC_MAJOR:
        raise InvalidTargetError(
            f"compute_capability '{text}' is not valid: use MAJOR.MINOR between "
            f"{_MIN_CC_MAJOR}.0 and {_MAX_CC_MAJOR}.x, for example '8.0'.",
            hint="nvidia-smi --query-gpu=compute_cap --format=csv prints it on the server.",
            field=errors.COMPUTE_CAPABILITY,
        )
    return int(match.group(1)), int(match.group(2))


# LABELS AND JSON


def _gib_text(num_bytes: int) -> str:
    gib = num_bytes / GIB
    return f"{gib:.0f} GiB" if gib >= 10 else f"{gib:.1f} GiB"


def target_label(*, target: Target) -> str:
    """'2 × NVIDIA A100 80GB (driver 550.54.15, CUDA 12.4)' or 'CPU only, 64 GiB RAM'."""
    if target.is_cpu_only:
        return f"CPU only, {_gib_text(target.ram_bytes)} RAM" if target.ram_bytes else "CPU only"
    counts: dict[str, int] = {}
    for gpu in target.gpus:
        counts[gpu.name] = counts.get(gpu.name, 0) + 1
    cards = " + ".join(f"{count} × {name}" for name, count in counts.items())
    details = [f"driver {target.driver_version}"] if target.driver_version else []
    if target.cuda_version:
        details.append(f"CUDA {target.cuda_version}")
    if target.gpu_api is not None and target.gpu_api != "cuda":
        details.append({"rocm": "ROCm", "vulkan": "Vulkan"}[target.gpu_api])
    return f"{cards} ({', '.join(details)})" if details else cards


def target_summary(target: Target) -> dict[str, Any]:
    """Plain JSON-ready dict of a target (``ezrunner hardware --json`` prints it)."""

    def gib(num_bytes: int | None) -> float | None:
        return None if num_bytes is None else round(num_bytes / GIB, 2)

    return {
        "origin": target.origin,
        "label": target.label or target_label(target=target),
        "cpu_only": target.is_cpu_only,
        "gpu_count": target.gpu_count,
        "gpus": [
            {
                "index": gpu.index,
                "name": gpu.name,
                "memory_bytes": gpu.memory_bytes,
                "memory_gib": gib(gpu.memory_bytes),
                "compute_capability": gpu.compute_capability_str,
                "vendor": gpu.vendor,
            }
            for gpu in target.gpus
        ],
        "driver_version": target.driver_version,
        "cuda_version": target.cuda_version,
        "gpu_api": target.gpu_api,
        "cpu_cores": target.cpu_cores,
        "ram_bytes": target.ram_bytes,
        "ram_gib": gib(target.ram_bytes),
        "free_disk_bytes": target.free_disk_bytes,
        "free_disk_gib": gib(target.free_disk_bytes),
        "notes": list(target.notes),
    }


# DESCRIBED TARGETS


def describe_target(
    *,
    gpu_preset: str | None = None,
    gpu_count: int = 1,
    gpu_memory_gib: float | None = None,
    compute_capability: str | None = None,
    driver_version: str | None = None,
    cpu_only: bool = False,
    ram_gib: float | None = None,
    cpu_cores: int | None = None,
    gpu_api: str | None = None,
) -> Target:
    """A target from what the user says about the server; raises ``InvalidTargetError`` on bad input.

    ``gpu_memory_gib`` and ``compute_capability`` override the preset's values, or describe a card
    that has no preset (then both are required). ``gpu_api`` ("cuda", "rocm", "vulkan") picks how the
    card is driven where its vendor offers more than one (an AMD card through Vulkan); a card without a
    preset and ``gpu_api`` "rocm" or "vulkan" is an AMD card, which needs no compute capability.
    """
    if ram_gib is not None and not (ram_gib > 0 and math.isfinite(ram_gib)):
        raise InvalidTargetError(
            f"ram_gib {ram_gib} is not valid: RAM must be more than 0 GiB.",
            hint="Leave it out if you do not know it.",
            field=errors.RAM,
        )
    if ram_gib is not None and ram_gib > MAX_RAM_GIB:
        raise InvalidTargetError(
            f"ram_gib {ram_gib:g} is not valid: use at most {MAX_RAM_GIB:,} GiB (64 TiB).",
            hint="Give the RAM in GiB, e.g. 512 for a server with 512 GiB; leave it out if you do not know it.",
            field=errors.RAM,
        )
    if cpu_cores is not None and cpu_cores < 1:
        raise InvalidTargetError(
            f"cpu_cores {cpu_cores} is not valid: a server has at least 1 core.",
            hint="Leave it out if you do not know it.",
            field=errors.CPU_CORES,
        )
    if cpu_cores is not None and cpu_cores > MAX_CPU_CORES:
        raise InvalidTargetError(
            f"cpu_cores {cpu_cores:,} is not valid: use at most {MAX_CPU_CORES:,} cores.",
            hint="`nproc` prints it on the server; leave it out if you do not know it.",
            field=errors.CPU_CORES,
        )
    ram_bytes = None if ram_gib is None else int(ram_gib * GIB)

    if cpu_only:
        given = {
            "gpu_preset": gpu_preset,
            "gpu_memory_gib": gpu_memory_gib,
            "compute_capability": compute_capability,
            "driver_version": driver_version,
            "gpu_api": gpu_api,
        }
        clashes = [f"{name}={value!r}" for name, value in given.items() if value is not None]
        if gpu_count not in (0, 1):
            clashes.append(f"gpu_count={gpu_count}")
        if clashes:
            raise InvalidTargetError(
                f"cpu_only contradicts the GPU settings given ({', '.join(clashes)}).",
                hint="Either drop cpu_only or drop the GPU settings.",
                field=errors.CPU_ONLY,
            )
        target = Target(cpu_cores=cpu_cores, ram_bytes=ram_bytes, origin="described")
        return replace(target, label=target_label(target=target))

    if not 1 <= gpu_count <= _MAX_GPU_COUNT:
        raise InvalidTargetError(
            f"gpu_count {gpu_count} is not valid: use 1 to {_MAX_GPU_COUNT} GPUs.",
            hint="For a server with no GPU, use cpu_only.",
            field=errors.GPUS,
        )
    if gpu_preset is None and gpu_memory_gib is None:
        raise InvalidTargetError(
            "No GPU described: give gpu_preset, or gpu_memory_gib and compute_capability.",
            hint=f"Known presets: {', '.join(GPU_PRESETS)}. For a server with no GPU, use cpu_only.",
            field=errors.GPU_PRESET,
        )

    preset = None if gpu_preset is None else resolve_gpu_preset(name=gpu_preset)
    vendor: GpuVendor = preset.vendor if preset is not None else ("amd" if gpu_api in ("rocm", "vulkan") else "nvidia")
    api = _gpu_api(gpu_api, vendor=vendor, card=preset.display_name if preset else None)
    if vendor != "nvidia" and (compute_capability is not None or driver_version is not None):
        raise InvalidTargetError(
            f"{preset.display_name if preset else 'An AMD card'} has no CUDA compute capability or NVIDIA driver.",
            hint="Leave out compute_capability and driver_version for AMD and Intel cards.",
            field=errors.COMPUTE_CAPABILITY if compute_capability is not None else errors.DRIVER,
        )
    if gpu_memory_gib is not None and not _MIN_GPU_GIB <= gpu_memory_gib <= _MAX_GPU_GIB:
        raise InvalidTargetError(
            f"gpu_memory_gib {gpu_memory_gib} is not valid: use {_MIN_GPU_GIB} to {_MAX_GPU_GIB} GiB "
            "per GPU.",
            hint="nvidia-smi --query-gpu=memory.total --format=csv prints it (MiB) on the server.",
            field=errors.GPU_MEMORY,
        )
    if compute_capability is not None:
        capability = parse_compute_capability(text=compute_capability)
    elif preset is not None:
        capability = preset.compute_capability
    elif vendor != "nvidia":
        capability = _NO_CC
    else:
        raise InvalidTargetError(
            "compute_capability is needed for a GPU that is not a preset.",
            hint="nvidia-smi --query-gpu=compute_cap --format=csv prints it on the server, e.g. '8.6'.",
            field=errors.COMPUTE_CAPABILITY,
        )
    if preset is not None:
        memory_bytes = preset.memory_bytes if gpu_memory_gib is None else int(gpu_memory_gib * GIB)
        name = preset.display_name
    else:
        memory_bytes = int(gpu_memory_gib * GIB)  # type: ignore[operator]  # checked above: not None
        name = f"GPU {gpu_memory_gib:g} GiB"

    driver = None if driver_version is None else driver_version.strip()
    cuda = None if driver is None else cuda_version_for_driver(driver_version=driver)
    gpu = Gpu(name=name, memory_bytes=memory_bytes, compute_capability=capability, vendor=vendor)
    target = Target(
        gpus=(gpu,) * gpu_count,
        driver_version=driver,
        cuda_version=cuda,
        cpu_cores=cpu_cores,
        ram_bytes=ram_bytes,
        origin="described",
        gpu_api=api,
    )
    return replace(target, label=target_label(target=target))


def _gpu_api(value: str | None, *, vendor: GpuVendor, card: str | None) -> GpuApi | None:
    if value is None:
        return None
    allowed = GPU_APIS_BY_VENDOR[vendor]
    api = value.strip().lower()
    for known in allowed:
        if api == known:
            return known
    raise InvalidTargetError(
        f"gpu_api '{value}' does not drive {card or 'this ' + vendor.upper() + ' card'}: it runs with "
        f"{' or '.join(allowed) or 'no GPU interface EZ Runner plans for'}.",
        hint="Leave gpu_api out to use the card's own interface (CUDA on NVIDIA, ROCm on AMD, Vulkan on Intel).",
        field=errors.GPU_API,
    )


# THIS MACHINE


def default_data_dir() -> Path:
    """Where history, builds and exports live: $EZRUNNER_HOME, else the platform's user data dir.

    Not created here; whoever writes into it creates it.
    """
    override = os.environ.get("EZRUNNER_HOME")
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "ezrunner"


def free_disk_bytes(*, path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (its nearest existing parent if not made yet).

    Odd paths end at the nearest parent that can be read: one under a file (``file/x``), one too long
    for the file system, one inside a folder this user may not list; relative paths count from the
    current directory."""
    existing = Path(os.path.abspath(path.expanduser()))
    while not _stat_ok(existing) and existing != existing.parent:
        existing = existing.parent
    try:
        import psutil
    except ImportError:
        return shutil.disk_usage(existing).free
    return int(psutil.disk_usage(str(existing)).free)


def _stat_ok(path: Path) -> bool:
    try:
        path.stat()
    except (OSError, ValueError):  # missing, not a folder, too long, no permission, NUL in the name
        return False
    return True


def _cpu_and_ram() -> tuple[int | None, int | None]:
    try:
        import psutil
    except ImportError:
        # psutil is a dependency, but scripts/check-gpu also runs on bare GPU machines without it
        cores = os.cpu_count()
        try:
            ram: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            ram = None
        return cores, ram
    return psutil.cpu_count(logical=True), int(psutil.virtual_memory().total)


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.515 returned bytes for names and versions
    return value.decode() if isinstance(value, bytes) else value


def _cuda_from_nvml(pynvml: Any) -> str | None:
    """The CUDA version the loaded driver supports, as "12.4" (NVML gives 12040)."""
    for function in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
        if hasattr(pynvml, function):
            try:
                encoded = int(getattr(pynvml, function)())
            except pynvml.NVMLError:
                continue
            return f"{encoded // 1000}.{(encoded % 1000) // 10}"
    return None


def _nvml_gpus() -> tuple[tuple[Gpu, ...], str | None, str | None, tuple[str, ...]]:
    """(gpus, driver version, CUDA version, notes) from NVML; never raises."""
    try:
        import pynvml
    except ImportError:
        return (), None, None, ("GPUs not checked: the nvidia-ml-py package is not installed.",)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return (), None, None, ("No NVIDIA driver found (libnvidia-ml is missing), so no GPU was seen.",)
    except pynvml.NVMLError_DriverNotLoaded:
        return (), None, None, ("The NVIDIA driver is installed but not loaded, so no GPU was seen.",)
    except (pynvml.NVMLError, OSError) as error:
        return (), None, None, (f"NVML could not start ({error}), so no GPU was seen.",)

    notes: list[str] = []
    gpus: list[Gpu] = []
    driver: str | None = None
    cuda: str | None = None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = _cuda_from_nvml(pynvml)
        if cuda is None and driver:
            cuda = cuda_version_for_driver(driver_version=driver)
        count = pynvml.nvmlDeviceGetCount()
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = _text(pynvml.nvmlDeviceGetName(handle))
                memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            except pynvml.NVMLError as error:
                notes.append(f"GPU {index} could not be read ({error}) and is left out.")
                continue
            gpus.append(Gpu(name=name, memory_bytes=memory, compute_capability=(major, minor), index=index))
        if count == 0:
            notes.append(f"The NVIDIA driver {driver} is loaded but reports no GPU.")
    except (pynvml.NVMLError, InvalidTargetError) as error:
        notes.append(f"NVML failed while listing GPUs ({error}).")
    finally:
        # shutting down after a failed query can fail too; nothing is left to release then
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return tuple(gpus), driver, cuda, tuple(notes)


@dataclass(frozen=True)
class FreeMemory:
    """What this machine has free right now: RAM that processes can take, and each NVIDIA GPU's free bytes."""

    ram_bytes: int | None
    gpu_bytes: Mapping[int, int]


def free_memory() -> FreeMemory:
    """This machine's free RAM (psutil's ``available``) and free GPU memory by index (NVML); never raises."""
    try:
        import psutil

        ram: int | None = int(psutil.virtual_memory().available)
    except ImportError:
        ram = None
    gpus: dict[int, int] = {}
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no package, no driver, no GPU: no GPU memory to count
        return FreeMemory(ram_bytes=ram, gpu_bytes={})
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            with contextlib.suppress(pynvml.NVMLError):
                gpus[index] = int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)
    except pynvml.NVMLError:
        pass
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return FreeMemory(ram_bytes=ram, gpu_bytes=gpus)


def detect_local(*, disk_path: Path | None = None) -> Target:
    """This machine as a target. Never raises for missing GPUs, drivers or libraries: see ``notes``."""
    gpus, driver, cuda, notes = _nvml_gpus()
    cores, ram = _cpu_and_ram()
    disk_notes: tuple[str, ...] = ()
    path = disk_path if disk_path is not None else default_data_dir()
    try:
        free: int | None = free_disk_bytes(path=path)
    except OSError as error:
        free = None
        disk_notes = (f"Free disk space at {path} could not be read ({error}).",)
    target = Target(
        gpus=gpus,
        driver_version=driver,
        cuda_version=cuda,
        cpu_cores=cores,
        ram_bytes=ram,
        free_disk_bytes=free,
        origin="detected",
        notes=notes + disk_notes,
    )
    return replace(target, label=target_label(target=target))
