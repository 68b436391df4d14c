"""Profiles inside the artifact: a pack planned for 2 × A100-80 (vLLM) carries profiles for its neighbours, and
the ONE selection script (the image's /etc/ezrunner/select-profile.sh, the same text in load.sh) picks among them
on the hardware a stand-in ``nvidia-smi`` reports: the 1-GPU profile with the context that fits on one A100-80,
the profile that uses all four on four, a refusal naming why on a T4. load.sh (with a stand-in ``docker``) and the
image's ENTRYPOINT (run as the container would, with a stand-in ``vllm``) start the same profile."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from core.archive import names
from core.errors import ArtifactInvalidError, InvalidOptionsError
from core.hubs.base import ModelInfo, WeightStats
from core.plan import Options, Plan, plan, plan_to_dict
from core.profiles import GPUS_ENV, RAM_ENV, check_profiles, choose, selection_script, with_neighbours
from core.render import BuildSpec, render, render_load_script
from core.runspec import (
    RUN_SPEC_LABEL,
    SELECT_SCRIPT_PATH,
    entrypoint,
    run_spec_from_json,
    run_spec_json,
    run_spec_to_dict,
)
from core.sizing import GIB
from ezrunner_ui.cli import main
from ezrunner_ui.cli.common import also_for_target
from tests.unit.test_load_sh_args import FAKE_DOCKER, SERVE
from tests.unit.test_plan import gpus
from tests.unit.test_render import qwen05b_on_cpu, with_files
from tests.unit.test_sizing import A100_80, load_config, model_info
from tests.unit.test_sizing import T4 as T4_GPU

# Qwen3-32B: 32.8 B parameters (its Hugging Face model card), BF16: 61 GiB of weights, a 40,960-token context.
QWEN3_32B_PARAMETERS = 32_762_123_264

# What `nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv,noheader` prints, one
# line per GPU (memory in MiB as NVML reports it: core/hardware.py's presets).
A100_LINE = "NVIDIA A100-SXM4-80GB, 81920 MiB, 8.0, 580.82.07"
H100_LINE = "NVIDIA H100 80GB HBM3, 81559 MiB, 9.0, 580.82.07"
T4_LINE = "Tesla T4, 15360 MiB, 7.5, 535.104.05"

FAKE_NVIDIA_SMI = """#!/bin/sh
# A stand-in for nvidia-smi: the GPU lines of $FAKE_GPUS ("" : the driver finds no GPU).
[ -n "$FAKE_GPUS" ] || { echo "No devices were found"; exit 6; }
printf '%s\\n' "$FAKE_GPUS"
"""
# A stand-in for the engine: prints the command line the ENTRYPOINT started it with.
FAKE_VLLM = """#!/bin/sh
echo "vllm $*"
"""


def qwen32b() -> ModelInfo:
    info = with_files(model_info("Llama-3.1-8B-Instruct", config=load_config("Qwen3-32B")), shards=14,
                      shard_bytes=4_700_000_000)  # fmt: skip
    return replace(info, weights=WeightStats(parameters_by_dtype={"BF16": QWEN3_32B_PARAMETERS}))


def qwen32b_on_two_a100() -> Plan:
    return with_neighbours(plan=plan(model=qwen32b(), target=gpus(A100_80, 2)))


def planned_on(count: int) -> Plan:
    """The plan the planner makes for ``count`` A100-80 directly: what the image's profile there must start."""
    return plan(model=qwen32b(), target=gpus(A100_80, count), options=Options(engine="vllm"))


@pytest.fixture(scope="module")
def packed() -> BuildSpec:
    return render(plan=qwen32b_on_two_a100())


def _stand_ins(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("nvidia-smi", FAKE_NVIDIA_SMI), ("docker", FAKE_DOCKER), ("vllm", FAKE_VLLM)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _env(tmp_path: Path, *lines: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EZRUNNER_")}
    return {**env, "PATH": f"{_stand_ins(tmp_path)}:{os.environ['PATH']}", "FAKE_GPUS": "\n".join(lines), **extra}


def _script_file(spec: BuildSpec, tmp_path: Path) -> Path:
    """The selection script exactly as the pack puts it into the image's build context."""
    files = dict(spec.context_files)
    path = tmp_path / "select-profile.sh"
    path.write_bytes(files["ezrunner/select-profile.sh"])
    return path


def _select(spec: BuildSpec, tmp_path: Path, *lines: str, forced: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(_script_file(spec, tmp_path)), "select", forced], env=_env(tmp_path, *lines),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_pack_carries_a_profile_per_neighbour_all_for_the_same_image(packed: BuildSpec) -> None:
    spec = packed.run_spec
    default = spec.default
    assert spec.default_profile == "default" and default.gpus_per_node == 2
    assert default.max_model_len == planned_on(2).max_model_len
    by_gpus = {p.gpus_per_node for p in spec.profiles}
    assert by_gpus == {1, 2, 4, 8}
    # the same vLLM CUDA image everywhere: no CPU profile, the model directory and served name unchanged
    assert {p.device for p in spec.profiles} == {"cuda"}
    assert all(p.argv[:3] == default.argv[:3] for p in spec.profiles)
    one = next(p for p in spec.profiles if p.gpus_per_node == 1 and "A100-SXM4-80GB" in p.description)
    assert one.tensor_parallel_size == 1 and one.max_model_len == planned_on(1).max_model_len < 40960  # capped
    # the facts to judge fit at start: GPUs, memory per GPU, compute capability (bf16: 8.0), driver of CUDA 13.0
    needs = default.needs
    assert 40 * GIB < needs.min_gpu_memory_bytes <= A100_80.memory_bytes  # the plan fits the card it was made on
    assert needs.min_compute_capability == "8.0" and needs.min_driver == "580.65.06" and needs.min_cuda == "13.0"
    assert needs.context_flag == "--max-model-len"
    # the smaller card's profiles (A100-40) are there too, each named apart
    assert any("A100 40GB" in p.description for p in spec.profiles)
    assert len({p.name for p in spec.profiles}) == len(spec.profiles)


def test_the_profiles_are_in_the_label_the_json_file_and_the_recorded_plan(packed: BuildSpec) -> None:
    labels = dict(packed.labels)
    files = dict(packed.context_files)
    assert run_spec_from_json(labels[RUN_SPEC_LABEL]) == packed.run_spec
    assert run_spec_from_json(files["ezrunner/run-spec.json"].decode()) == packed.run_spec
    recorded = plan_to_dict(qwen32b_on_two_a100())  # what History.start stores
    assert {n["gpus_per_node"] for n in recorded["neighbours"]} >= {1, 4, 8}
    assert "neighbours" not in plan_to_dict(qwen05b_on_cpu())  # plans without profiles keep their JSON


def test_a_run_spec_without_needs_still_loads_and_starts_unchecked() -> None:
    spec = render(plan=qwen05b_on_cpu()).run_spec
    data = run_spec_to_dict(spec)
    for profile in data["profiles"]:
        profile.pop("needs", None)  # a spec packed before profiles had needs
    old = run_spec_from_json(json.dumps(data))
    assert old.default.needs.empty and old.default.argv == spec.default.argv
    assert run_spec_from_json(run_spec_json(spec)) == spec
    data["profiles"][0]["needs"] = {"min_driver": "580; rm -rf /"}
    with pytest.raises(ArtifactInvalidError, match="min_driver"):
        run_spec_from_json(json.dumps(data))
    data["profiles"][0].pop("needs")
    data["profiles"][0]["name"] = data["default_profile"] = "a b"
    with pytest.raises(ArtifactInvalidError, match="profile names"):
        run_spec_from_json(json.dumps(data))


def test_one_a100_picks_the_one_gpu_profile_with_the_context_that_fits(packed: BuildSpec, tmp_path: Path) -> None:
    result = _select(packed, tmp_path, A100_LINE)
    assert result.returncode == 0, result.stderr
    name, context = result.stdout.split()
    profile = packed.run_spec.profile(name)
    assert profile.gpus_per_node == 1 and "A100-SXM4-80GB" in profile.description
    assert int(context) == profile.max_model_len == planned_on(1).max_model_len < 40960  # the model's is 40,960
    assert f"starting profile {name}" in result.stderr and "it fits" in result.stderr


def test_four_a100_pick_the_profile_that_uses_all_four(packed: BuildSpec, tmp_path: Path) -> None:
    result = _select(packed, tmp_path, *[A100_LINE] * 4)
    assert result.returncode == 0, result.stderr
    name, context = result.stdout.split()
    profile = packed.run_spec.profile(name)
    assert profile.gpus_per_node == 4 and int(context) == profile.max_model_len >= planned_on(4).max_model_len


def test_a_t4_is_refused_naming_why_and_the_closest(packed: BuildSpec, tmp_path: Path) -> None:
    result = _select(packed, tmp_path, T4_LINE)
    assert result.returncode == 1 and result.stdout == ""
    assert "no profile of this image fits this server (1 x Tesla T4" in result.stderr
    assert "The closest is cuda-1gpu-" in result.stderr
    for why in ("memory: needs", "compute capability: needs 8.0 or newer, the GPU has 7.5",
                "driver: needs 580.65.06 or newer (CUDA 13.0), this server has 535.104.05", "Next:"):  # fmt: skip
        assert why in result.stderr


def test_a_gpu_a_little_too_small_starts_with_the_shorter_context_that_fits(packed: BuildSpec, tmp_path: Path) -> None:
    # One H100 (81,559 MiB) is a little smaller than the A100-80 the 1-GPU profile was planned on.
    result = _select(packed, tmp_path, H100_LINE)
    assert result.returncode == 0, result.stderr
    name, context = result.stdout.split()
    profile = packed.run_spec.profile(name)
    assert profile.gpus_per_node == 1 and 2048 <= int(context) < profile.max_model_len
    assert int(context) % 256 == 0
    assert "shorter context" in result.stderr


def test_no_gpu_refuses_a_cuda_image_and_no_nvidia_smi_starts_the_default_unchecked(
    packed: BuildSpec, tmp_path: Path
) -> None:
    assert _select(packed, tmp_path).returncode == 1  # nvidia-smi answers "No devices were found"
    script = _script_file(packed, tmp_path)
    bare = {"PATH": "/usr/bin:/bin"}  # no nvidia-smi at all: the GPUs cannot be checked
    result = subprocess.run(["sh", str(script), "select"], env=bare, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["default", str(packed.run_spec.default.max_model_len)]
    assert "unchecked" in result.stderr


def test_a_forced_profile_is_started_and_an_unknown_one_refused(packed: BuildSpec, tmp_path: Path) -> None:
    forced = _select(packed, tmp_path, A100_LINE, forced="default")
    assert forced.returncode == 0 and forced.stdout.split() == ["default", str(packed.run_spec.default.max_model_len)]
    assert "forced although it does not fit: GPUs: needs 2" in forced.stderr
    unknown = _select(packed, tmp_path, A100_LINE, forced="nope")
    assert unknown.returncode == 2 and "has no profile nope" in unknown.stderr and "default" in unknown.stderr


def _stick(tmp_path: Path, spec: BuildSpec) -> Path:
    folder = tmp_path / "stick"
    folder.mkdir()
    payload = b"a docker-archive " * 100
    (folder / "m.tar").write_bytes(payload)
    names.checksum_path(folder / "m.tar").write_text(f"{hashlib.sha256(payload).hexdigest()}  m.tar\n")
    script = render_load_script(plan=qwen32b_on_two_a100(), spec=spec, archive_name="m.tar")
    (folder / "load.sh").write_text(script)
    return folder


def _load(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(folder / "load.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def _docker_env(tmp_path: Path, *lines: str) -> dict[str, str]:
    log = tmp_path / "docker.log"
    return _env(tmp_path, *lines, FAKE_DOCKER_LOG=str(log), FAKE_LOADED=str(tmp_path / "loaded"),
                FAKE_SERVER_PID=str(tmp_path / "server.pid"), FAKE_PYTHON=sys.executable)  # fmt: skip


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "docker.log"
    return log.read_text().splitlines() if log.exists() else []


def test_load_sh_carries_the_images_own_selection_script(packed: BuildSpec, tmp_path: Path) -> None:
    text = (_stick(tmp_path, packed) / "load.sh").read_text()
    embedded = next(line for line in text.splitlines(keepends=True) if line.startswith("SELECT_SCRIPT="))
    start = text.index(embedded)
    end = text.index("\nselect_profile() {", start)
    assert shlex.split(text[start + len("SELECT_SCRIPT="):end]) == [selection_script(packed.run_spec)]
    assert dict(packed.context_files)["ezrunner/select-profile.sh"].decode() == selection_script(packed.run_spec)


def test_load_sh_profiles_prints_the_three_groups_and_loads_nothing(packed: BuildSpec, tmp_path: Path) -> None:
    folder = _stick(tmp_path, packed)
    result = _load(folder, _docker_env(tmp_path, H100_LINE, H100_LINE), "--profiles")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "on this server: 2 x NVIDIA H100 80GB HBM3" in out
    runnable, shorter, incompatible = (out.index(t) for t in
                                       ("\nRunnable:", "\nRunnable with a shorter context:", "\nIncompatible:"))
    assert runnable < shorter < incompatible
    assert "uses 2 of 2 GPUs" in out[runnable:shorter]
    assert "--max-model-len " in out[shorter:incompatible]  # the 1-GPU A100-80 profile: an H100 is a little smaller
    assert "GPUs: needs 4, this server has 2" in out[incompatible:]
    chosen = _select(packed, tmp_path, H100_LINE, H100_LINE).stdout.split()[0]
    assert f"load.sh and the image start {chosen}" in out and packed.run_spec.profile(chosen).gpus_per_node == 2
    assert _calls(tmp_path) == []  # listing touches no Docker


def test_load_sh_refuses_a_t4_before_loading_anything(packed: BuildSpec, tmp_path: Path) -> None:
    folder = _stick(tmp_path, packed)
    result = _load(folder, _docker_env(tmp_path, T4_LINE), "--network", "host", "--port", "1")
    assert result.returncode == 1
    assert "no profile of this image fits" in result.stderr and "compute capability" in result.stderr
    assert not [c for c in _calls(tmp_path) if c.startswith(("load", "run"))]


def test_load_sh_and_the_entrypoint_start_the_same_profile(packed: BuildSpec, tmp_path: Path) -> None:
    folder = _stick(tmp_path, packed)
    env = _docker_env(tmp_path, A100_LINE)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _load(folder, {**env, "FAKE_SERVE": SERVE}, "--network", "host", "--port", str(port), "--timeout", "30")
    try:
        assert result.returncode == 0, result.stderr
    finally:
        pid = tmp_path / "server.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), 15)
    run = next(c for c in _calls(tmp_path) if c.startswith("run "))
    chosen = _select(packed, tmp_path, A100_LINE).stdout.split()
    assert f"-e EZRUNNER_PROFILE={chosen[0]} -e EZRUNNER_MAX_MODEL_LEN={chosen[1]}" in run
    assert f"starting profile {chosen[0]}" in result.stderr

    # The image started by hand (docker run IMAGE, no arguments): its ENTRYPOINT, with the script where the
    # image keeps it, picks by itself and starts vLLM with the same profile.
    argv = entrypoint(packed.run_spec)
    command = argv[2].replace(SELECT_SCRIPT_PATH, str(_script_file(packed, tmp_path)))
    by_hand = subprocess.run([argv[0], argv[1], command, argv[3]], env={**_env(tmp_path, A100_LINE), "PORT": "8000"},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert by_hand.returncode == 0, by_hand.stderr
    started = by_hand.stdout.split()
    profile = packed.run_spec.profile(chosen[0])
    assert started == ["vllm", *profile.argv[1:], "--port", "8000"]
    assert started[started.index("--max-model-len") + 1] == chosen[1]
    assert started[started.index("--tensor-parallel-size") + 1] == "1"

    # load.sh's choice passed in the environment is started as given, without choosing again
    given = subprocess.run([argv[0], argv[1], command, argv[3], "--seed", "1"],
                           env={**_env(tmp_path), "PORT": "9", "EZRUNNER_PROFILE": chosen[0],
                                "EZRUNNER_MAX_MODEL_LEN": "4096"},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert given.returncode == 0, given.stderr
    assert given.stdout.split()[-4:] == ["--port", "9", "--seed", "1"]
    assert given.stdout.split()[given.stdout.split().index("--max-model-len") + 1] == "4096"


def test_also_for_parses_the_target_flags_of_plan_and_adds_its_profile() -> None:
    assert also_for_target("--gpu-name H200 --gpus 1").gpus[0].name == "NVIDIA H200 141GB"
    with pytest.raises(InvalidOptionsError, match="--also-for '--gpus 2 --bogus': unrecognized arguments"):
        also_for_target("--gpus 2 --bogus")
    with pytest.raises(InvalidOptionsError, match="describes no server"):
        also_for_target("")
    with pytest.raises(InvalidOptionsError, match="not a known GPU"):
        also_for_target("--gpu-name Z900")
    base = qwen32b_on_two_a100()
    more = with_neighbours(plan=replace(base, neighbours=()), also_for=[also_for_target("--gpu-name H200 --gpus 1")])
    spec = render(plan=more).run_spec
    h200 = [p for p in spec.profiles if "H200" in p.description]
    assert len(h200) == 1 and h200[0].gpus_per_node == 1 and h200[0].max_model_len == 40960


def test_a_cpu_pack_has_its_cpu_profile_judged_by_ram(tmp_path: Path) -> None:
    spec = render(plan=with_neighbours(plan=qwen05b_on_cpu())).run_spec
    assert [p.device for p in spec.profiles] == ["cpu"]  # the CPU image serves no GPU profile
    assert spec.default.needs.min_ram_bytes > 0
    script = selection_script(spec)
    for ram, code in ((str(64 * GIB), 0), ("1000", 1)):
        env = {"PATH": os.environ["PATH"], GPUS_ENV: "none", RAM_ENV: ram}
        done = subprocess.run(["sh", "-c", script, "select-profile", "select"], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == code, done.stderr
    assert "memory: needs" in done.stderr and "of RAM" in done.stderr


def _fake_archive(path: Path, labels: dict[str, str]) -> None:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": labels}}).encode()
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["ezrunner/m:1"], "Layers": []}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("c.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_ezrunner_profiles_lists_an_archive_against_a_described_server(
    packed: BuildSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "m.tar"
    _fake_archive(archive, dict(packed.labels))
    assert main(["profiles", str(archive), "--gpu-name", "A100-80", "--gpus", "1", "--driver", "580.82.07"]) == 0
    out = capsys.readouterr().out
    assert out.index("Runnable:") < out.index("Incompatible:")
    assert "GPUs: needs 2, this server has 1" in out
    chosen = choose(spec=packed.run_spec, target=gpus(A100_80, 1))
    assert chosen is not None and f"load.sh and the image start {chosen[0]}." in out
    assert main(["profiles", str(archive), "--gpu-name", "T4", "--driver", "535.104.05", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["chosen"] is None and {p["group"] for p in data["profiles"]} == {"incompatible"}
    assert any("compute capability" in p["reason"] for p in data["profiles"])
    # the same judgement as the image's: check_profiles runs the image's own script
    fits = check_profiles(spec=packed.run_spec, target=gpus(A100_80, 4))
    assert {"runnable", "incompatible"} <= {f.group for f in fits}


def test_a_gguf_pack_for_an_l4_serves_a_t4_with_the_profile_planned_for_it() -> None:
    from tests.unit.test_llamacpp_engine import L4 as L4_GPU
    from tests.unit.test_llamacpp_engine import gguf_repo, target

    packed_plan = with_neighbours(plan=plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(L4_GPU)))
    assert all(n.model.files == packed_plan.model.files for n in packed_plan.neighbours)  # the one quantization
    spec = render(plan=packed_plan).run_spec
    assert {p.device for p in spec.profiles} == {"cuda"}
    assert all("tp" not in p.name for p in spec.profiles)  # llama.cpp splits layers, not tensors
    fits = {f.name: f for f in check_profiles(spec=spec, target=gpus(T4_GPU, 1))}
    assert fits["default"].group == "incompatible" and "memory: needs" in fits["default"].reason
    chosen = choose(spec=spec, target=gpus(T4_GPU, 1))
    assert chosen is not None
    profile = spec.profile(chosen[0])
    assert "T4" in profile.description and chosen[1] == profile.max_model_len < spec.default.max_model_len


def test_pack_refuses_also_for_with_a_hand_edited_dockerfile_and_bad_targets_before_any_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EZRUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a hub call would fail otherwise
    out = str(tmp_path / "m.tar")
    both = main(["pack", "org/model", "--gpu-name", "A100-80", "-o", out, "--dockerfile", str(tmp_path / "D"),
                 "--also-for", "--gpu-name T4"])  # fmt: skip
    assert both == 2 and "hand-edited --dockerfile" in capsys.readouterr().err
    bad = main(["pack", "org/model", "--gpu-name", "A100-80", "-o", out, "--also-for", "--gpu-name A100-80 --gpus x"])
    assert bad == 2 and "--also-for '--gpu-name A100-80 --gpus x'" in capsys.readouterr().err


def test_the_pack_summary_lists_the_profiles(packed: BuildSpec) -> None:
    from ezrunner_ui.cli.pack import profile_lines

    lines = profile_lines(qwen32b_on_two_a100(), load_script="load.sh")
    assert lines[0].startswith(f"Profiles ({len(packed.run_spec.profiles)}; ") and "bash load.sh --profiles" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == [p.name for p in packed.run_spec.profiles]
    assert lines[1].endswith("(default)")
