"""Hardware targets: presets, validation, driver → CUDA, labels, and detection on this machine."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pynvml
import pytest

from core.errors import InvalidTargetError
from core.hardware import (
    DRIVER_CUDA_TABLE,
    GIB,
    GPU_PRESETS,
    Gpu,
    Target,
    _normalise,
    cuda_version_for_driver,
    default_data_dir,
    describe_target,
    detect_local,
    find_gpu_preset,
    free_disk_bytes,
    resolve_gpu_preset,
    target_label,
    target_summary,
)

# PRESETS


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("a100-80", "a100-80gb"),
        ("A100 80GB", "a100-80gb"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb"),
        ("a100_40GB", "a100-40gb"),
        ("h100", "h100-sxm"),
        ("H100 80GB HBM3", "h100-sxm"),
        ("h100 PCIe", "h100-pcie"),
        ("H200", "h200"),
        ("Tesla T4", "t4"),
        ("tesla v100-sxm2-32gb", "v100-32gb"),
        ("RTX 4090", "rtx-4090"),
        ("A10G", "a10g"),
        ("a10", "a10"),
        ("A6000", "rtx-a6000"),
        ("b200", "b200"),
    ],
)
def test_preset_aliases_are_case_insensitive(spelling: str, key: str) -> None:
    preset = find_gpu_preset(name=spelling)
    assert preset is not None
    assert preset.key == key
    assert resolve_gpu_preset(name=spelling) is preset


def test_every_preset_is_found_by_its_key_display_name_and_nvml_name() -> None:
    for preset in GPU_PRESETS.values():
        for spelling in (preset.key, preset.display_name, preset.nvml_name, *preset.aliases):
            assert find_gpu_preset(name=spelling) is preset, spelling


def test_no_spelling_means_two_presets() -> None:
    owners: dict[str, str] = {}
    for preset in GPU_PRESETS.values():
        spellings = (preset.key, preset.display_name, preset.nvml_name, *preset.aliases)
        for spelling in {_normalise(s) for s in spellings}:
            assert owners.setdefault(spelling, preset.key) == preset.key, spelling


def test_presets_hold_plausible_cards() -> None:
    required = {"t4", "v100-16gb", "v100-32gb", "a10", "a10g", "l4", "l40s", "a100-40gb", "a100-80gb"}
    required |= {"h100-sxm", "h100-pcie", "h200", "rtx-3090", "rtx-4090", "rtx-a6000"}
    assert required <= set(GPU_PRESETS)
    for preset in GPU_PRESETS.values():
        assert 8 <= preset.memory_gib <= 200, preset.key
        assert preset.memory_bytes % (1 << 20) == 0, preset.key  # NVML totals are whole MiB
        if preset.vendor == "nvidia":
            assert 7 <= preset.compute_capability[0] <= 12, preset.key
        else:  # AMD and Intel cards have no CUDA compute capability
            assert preset.compute_capability == (0, 0), preset.key
    # read on a real H100 80GB HBM3 with scripts/check-gpu
    assert GPU_PRESETS["h100-sxm"].memory_bytes == 85_520_809_984
    assert GPU_PRESETS["h100-sxm"].compute_capability == (9, 0)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(InvalidTargetError) as caught:
        resolve_gpu_preset(name="z9000")
    message = str(caught.value)
    assert "gpu_preset 'z9000'" in message
    for key in GPU_PRESETS:
        assert key in message
    assert find_gpu_preset(name="z9000") is None


@pytest.mark.parametrize(
    ("name", "choices"), [("a100", ("a100-40gb", "a100-80gb")), ("V100", ("v100-16gb", "v100-32gb"))]
)
def test_ambiguous_preset_names_both_choices(name: str, choices: tuple[str, str]) -> None:
    with pytest.raises(InvalidTargetError) as caught:
        describe_target(gpu_preset=name)
    assert all(choice in str(caught.value) for choice in choices)


# DRIVER → CUDA


@pytest.mark.parametrize(("cuda", "minimum"), DRIVER_CUDA_TABLE)
def test_each_table_row_starts_at_its_minimum_driver(cuda: str, minimum: str) -> None:
    assert cuda_version_for_driver(driver_version=minimum) == cuda
    parts = minimum.split(".")
    just_below = ".".join([*parts[:-1], str(int(parts[-1]) - 1)])
    assert cuda_version_for_driver(driver_version=just_below) != cuda


@pytest.mark.parametrize(
    ("driver", "cuda"),
    [
        ("550.54.15", "12.4"),
        ("550.54.14", "12.4"),
        ("550.40.07", "12.3"),
        ("535.104.05", "12.2"),
        ("530.30.02", "12.1"),
        ("525.60.13", "12.0"),
        ("520.61.05", "11.8"),
        ("570.26", "12.8"),
        ("570.195.03", "12.8"),
        ("565.57.01", "12.6"),
        ("580.159.04", "13.0"),
        ("400.14", None),
    ],
)
def test_driver_maps_to_the_cuda_it_supports(driver: str, cuda: str | None) -> None:
    assert cuda_version_for_driver(driver_version=driver) == cuda


def test_table_is_sorted_newest_first() -> None:
    def as_tuple(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in version.split("."))

    cudas = [as_tuple(cuda) for cuda, _ in DRIVER_CUDA_TABLE]
    drivers = [as_tuple(driver) for _, driver in DRIVER_CUDA_TABLE]
    assert cudas == sorted(cudas, reverse=True)
    assert drivers == sorted(drivers, reverse=True)


@pytest.mark.parametrize("driver", ["55.1", "abc", "550", "550.54.15.1", ""])
def test_bad_driver_version_is_named(driver: str) -> None:
    with pytest.raises(InvalidTargetError) as caught:
        describe_target(gpu_preset="l4", driver_version=driver)
    assert f"driver_version '{driver}'" in str(caught.value)
    assert "550.54.15" in str(caught.value)


# DESCRIBED TARGETS


def test_described_preset_fills_every_field() -> None:
    target = describe_target(
        gpu_preset="h100", gpu_count=2, driver_version="550.54.15", ram_gib=512, cpu_cores=64
    )
    preset = GPU_PRESETS["h100-sxm"]
    assert target.origin == "described"
    assert target.gpu_count == 2
    assert all(gpu.memory_bytes == preset.memory_bytes for gpu in target.gpus)
    assert all(gpu.compute_capability == (9, 0) and gpu.index is None for gpu in target.gpus)
    assert target.driver_version == "550.54.15"
    assert target.cuda_version == "12.4"
    assert target.ram_bytes == 512 * GIB
    assert target.cpu_cores == 64
    assert target.free_disk_bytes is None
    assert target.label == f"2 × {preset.display_name} (driver 550.54.15, CUDA 12.4)"


def test_described_overrides_replace_the_preset_values() -> None:
    target = describe_target(gpu_preset="a100-80gb", gpu_memory_gib=79.5, compute_capability="8.6")
    assert target.gpus[0].memory_bytes == int(79.5 * GIB)
    assert target.gpus[0].compute_capability == (8, 6)
    assert target.driver_version is None and target.cuda_version is None
    assert target.label == "1 × NVIDIA A100 80GB"


def test_described_custom_gpu_needs_memory_and_compute_capability() -> None:
    target = describe_target(gpu_memory_gib=48, compute_capability="8.9", gpu_count=4)
    assert target.gpu_count == 4
    assert target.gpus[0].memory_bytes == 48 * GIB
    assert target.gpus[0].compute_capability_str == "8.9"
    with pytest.raises(InvalidTargetError, match="compute_capability is needed"):
        describe_target(gpu_memory_gib=48)


def test_described_cpu_only() -> None:
    target = describe_target(cpu_only=True, ram_gib=64, cpu_cores=32)
    assert target.is_cpu_only and target.gpu_count == 0
    assert target.ram_bytes == 64 * GIB
    assert target.label == "CPU only, 64 GiB RAM"
    assert describe_target(cpu_only=True).label == "CPU only"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"gpu_preset": "l4", "gpu_count": 0}, ["gpu_count 0", "1 to 16"]),
        ({"gpu_preset": "l4", "gpu_count": 17}, ["gpu_count 17", "1 to 16"]),
        ({"gpu_preset": "l4", "gpu_memory_gib": 0.5}, ["gpu_memory_gib 0.5", "1 to 1024 GiB"]),
        ({"gpu_preset": "l4", "gpu_memory_gib": 2048}, ["gpu_memory_gib 2048", "1 to 1024 GiB"]),
        ({"gpu_preset": "l4", "compute_capability": "2.0"}, ["compute_capability '2.0'", "3.0 and 12.x"]),
        ({"gpu_preset": "l4", "compute_capability": "13.0"}, ["compute_capability '13.0'", "3.0 and 12.x"]),
        ({"gpu_preset": "l4", "compute_capability": "8"}, ["compute_capability '8'", "'8.0'"]),
        ({"gpu_preset": "l4", "compute_capability": "sm_90"}, ["compute_capability 'sm_90'"]),
        ({"cpu_only": True, "gpu_preset": "l4"}, ["cpu_only contradicts", "gpu_preset='l4'"]),
        ({"cpu_only": True, "gpu_count": 4}, ["cpu_only contradicts", "gpu_count=4"]),
        ({"cpu_only": True, "driver_version": "550.54.15"}, ["cpu_only contradicts", "driver_version"]),
        ({"cpu_only": True, "ram_gib": 0}, ["ram_gib 0", "more than 0"]),
        ({"gpu_preset": "l4", "ram_gib": -8}, ["ram_gib -8", "more than 0"]),
        ({"gpu_preset": "l4", "cpu_cores": 0}, ["cpu_cores 0", "at least 1"]),
        ({}, ["No GPU described", "cpu_only", "h100-sxm"]),
    ],
)
def test_invalid_descriptions_name_field_value_and_range(kwargs: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(InvalidTargetError) as caught:
        describe_target(**kwargs)
    assert caught.value.code == "invalid_target"
    for text in expected:
        assert text in str(caught.value)


def test_label_groups_mixed_gpus() -> None:
    target = Target(
        gpus=(
            Gpu("NVIDIA A10", 23028 << 20, (8, 6), 0),
            Gpu("NVIDIA A10", 23028 << 20, (8, 6), 1),
            Gpu("Tesla T4", 15360 << 20, (7, 5), 2),
        ),
        driver_version="535.104.05",
    )
    assert target_label(target=target) == "2 × NVIDIA A10 + 1 × Tesla T4 (driver 535.104.05)"


def test_summary_is_plain_json() -> None:
    target = describe_target(gpu_preset="a100-80gb", gpu_count=2, driver_version="550.54.15", ram_gib=256)
    summary = target_summary(target)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["label"] == target.label
    assert summary["gpu_count"] == 2 and summary["cpu_only"] is False
    assert summary["gpus"][0]["memory_bytes"] == GPU_PRESETS["a100-80gb"].memory_bytes
    assert summary["gpus"][0]["memory_gib"] == 80.0
    assert summary["gpus"][0]["compute_capability"] == "8.0"
    assert (summary["driver_version"], summary["cuda_version"]) == ("550.54.15", "12.4")
    assert summary["ram_gib"] == 256.0
    assert summary["notes"] == []


# THIS MACHINE


def test_detect_local_reads_this_machine(tmp_path: Path) -> None:
    target = detect_local(disk_path=tmp_path)
    assert target.origin == "detected"
    assert target.cpu_cores == psutil.cpu_count(logical=True)
    assert target.ram_bytes == psutil.virtual_memory().total
    assert target.free_disk_bytes is not None
    # other processes write to the same disk while the test runs
    assert abs(target.free_disk_bytes - psutil.disk_usage(str(tmp_path)).free) < 512 << 20
    assert target.label == target_label(target=target)
    if target.is_cpu_only:
        # CI and the development machine have no GPU: the reason must be said, not guessed at
        assert target.notes and target.label.startswith("CPU only, ")
        assert target.driver_version is None and target.cuda_version is None
    else:
        assert all(gpu.index == i and gpu.memory_bytes > 0 for i, gpu in enumerate(target.gpus))
        assert target.driver_version and target.cuda_version


def test_free_disk_of_a_folder_not_made_yet_is_its_filesystems(tmp_path: Path) -> None:
    free = free_disk_bytes(path=tmp_path / "not" / "made" / "yet")
    assert abs(free - psutil.disk_usage(str(tmp_path)).free) < 512 << 20


@pytest.mark.parametrize(
    ("code", "expected_class", "note"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVMLError_LibraryNotFound, "No NVIDIA driver found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, pynvml.NVMLError_DriverNotLoaded, "not loaded"),
        (pynvml.NVML_ERROR_UNKNOWN, pynvml.NVMLError_Unknown, "NVML could not start"),
    ],
)
def test_detect_local_when_nvml_cannot_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int, expected_class: type, note: str
) -> None:
    # NVMLError(code) builds the subclass that NVML itself raises for that code
    error: Exception = pynvml.NVMLError(code)
    assert isinstance(error, expected_class)

    def failing_init() -> None:
        raise error

    monkeypatch.setattr(pynvml, "nvmlInit", failing_init)
    target = detect_local(disk_path=tmp_path)
    assert target.is_cpu_only
    assert len(target.notes) == 1 and note in target.notes[0]
    assert target.cpu_cores == psutil.cpu_count(logical=True)
    assert target.label.startswith("CPU only, ")


def test_detect_local_when_nvml_fails_after_start_still_shuts_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # nvmlInit "succeeds" but no library is loaded (also where an earlier test loaded the real one),
    # so the next call raises NVML's own Uninitialized error
    shutdowns: list[bool] = []
    real_shutdown = pynvml.nvmlShutdown

    def recording_shutdown() -> None:
        shutdowns.append(True)
        real_shutdown()

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", recording_shutdown)
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    target = detect_local(disk_path=tmp_path)
    assert target.is_cpu_only
    assert shutdowns == [True]
    assert any("NVML failed" in note for note in target.notes)


class _FakeNvml:
    """Two GPUs as an old nvidia-ml-py shows them (bytes names) plus one GPU that cannot be read."""

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded

    def __init__(self) -> None:
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return 3

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index == 2:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA A100-SXM4-80GB"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=81920 << 20)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return (8, 0)


def test_detect_local_reads_gpus_through_nvml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    target = detect_local(disk_path=tmp_path)
    assert [gpu.index for gpu in target.gpus] == [0, 1]
    assert all(gpu.name == "NVIDIA A100-SXM4-80GB" for gpu in target.gpus)
    assert all(gpu.memory_bytes == GPU_PRESETS["a100-80gb"].memory_bytes for gpu in target.gpus)
    assert target.gpus[0].compute_capability == (8, 0)
    assert (target.driver_version, target.cuda_version) == ("550.54.15", "12.4")
    assert target.label == "2 × NVIDIA A100-SXM4-80GB (driver 550.54.15, CUDA 12.4)"
    assert len(target.notes) == 1 and target.notes[0].startswith("GPU 2 could not be read")
    assert fake.shutdowns == 1


def test_detect_local_without_the_nvml_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    target = detect_local(disk_path=tmp_path)
    assert target.is_cpu_only
    assert "nvidia-ml-py" in target.notes[0]


def test_detect_local_without_psutil_uses_the_standard_library(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)
    target = detect_local(disk_path=tmp_path)
    assert target.cpu_cores == os.cpu_count()
    assert target.ram_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert target.free_disk_bytes is not None and target.free_disk_bytes > 0


# DATA DIR


def test_default_data_dir_honours_ezrunner_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EZRUNNER_HOME", str(tmp_path / "ez"))
    assert default_data_dir() == tmp_path / "ez"


def test_default_data_dir_follows_xdg_on_linux(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("EZRUNNER_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data" / "ezrunner"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".local" / "share" / "ezrunner"
