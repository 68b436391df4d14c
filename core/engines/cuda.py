"""CUDA ↔ NVIDIA driver rules: which driver starts an image built on which CUDA toolkit."""

from __future__ import annotations

from dataclasses import dataclass

from core.hardware import Target

# Minimum Linux x86_64 driver for each CUDA toolkit (GA release), from NVIDIA's CUDA Toolkit release notes,
# table "CUDA Toolkit and Corresponding Driver Versions". Minor-version compatibility lets a 12.x build run
# on any driver >= 525 with reduced features (no newer-PTX JIT), which is why messages call the GA number
# the safe one.
CUDA_MIN_DRIVER: dict[str, str] = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}
# The driver branch that opens each CUDA major family through minor-version compatibility (NVIDIA CUDA
# compatibility guide: "CUDA 13.x >= 580, CUDA 12.x >= 525, CUDA 11.x >= 450").
CUDA_FAMILY_MIN_DRIVER_BRANCH: dict[int, int] = {11: 450, 12: 525, 13: 580}


def version_tuple(text: str) -> tuple[int, ...]:
    """``"12.8"`` → (12, 8); ``"570.124.06"`` → (570, 124, 6); non-numeric parts stop the parse."""
    parts: list[int] = []
    for piece in text.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def highest_cuda_for_driver(driver_version: str) -> str | None:
    """The newest CUDA in ``CUDA_MIN_DRIVER`` whose GA driver this driver meets (None: older than all)."""
    driver = version_tuple(driver_version)
    best: str | None = None
    for cuda, needed in CUDA_MIN_DRIVER.items():
        if driver >= version_tuple(needed) and (best is None or version_tuple(cuda) > version_tuple(best)):
            best = cuda
    return best


@dataclass(frozen=True)
class DriverCheck:
    """Whether the target's driver can start an image built on ``image_cuda``."""

    ok: bool | None  # None: the target did not say which driver it has
    image_cuda: str
    min_driver: str
    target_cuda: str | None  # the highest CUDA the target's driver supports, as known or derived
    driver_version: str | None


def check_driver(*, target: Target, image_cuda: str) -> DriverCheck:
    """Compare the target's supported CUDA (NVML's answer, or derived from the driver version) with the
    CUDA version an image was built on."""
    min_driver = CUDA_MIN_DRIVER.get(image_cuda, "")
    target_cuda = target.cuda_version
    if target_cuda is None and target.driver_version:
        target_cuda = highest_cuda_for_driver(target.driver_version)
        if target_cuda is None:
            target_cuda = "11.7"  # older than every entry in the table
    if target_cuda is None:
        ok: bool | None = None
    else:
        ok = version_tuple(target_cuda)[:2] >= version_tuple(image_cuda)[:2]
    return DriverCheck(
        ok=ok,
        image_cuda=image_cuda,
        min_driver=min_driver,
        target_cuda=target_cuda,
        driver_version=target.driver_version,
    )


def driver_branch(driver_version: str | None) -> int | None:
    """``"550.54.15"`` → 550."""
    if not driver_version:
        return None
    parts = version_tuple(driver_version)
    return parts[0] if parts else None
