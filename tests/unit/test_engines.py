"""Engine protocol: pinned images, serve commands, GPU runtime, and the CUDA ↔ driver rules."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from core.engines import ENGINES, engine_for
from core.engines.cuda import CUDA_MIN_DRIVER, check_driver, highest_cuda_for_driver, version_tuple
from core.engines.transformers import TransformersEngine
from core.engines.versions import (
    TORCH_CPU_VERSION,
    TRANSFORMERS_CPU_BASE_IMAGE,
    TRANSFORMERS_GPU_BASE_IMAGE,
    TRANSFORMERS_VERSION,
    VLLM_IMAGE,
    VLLM_IMAGE_CUDA_12,
    VLLM_IMAGE_CUDA_VERSION,
    VLLM_MIN_COMPUTE_CAPABILITY,
    VLLM_MIN_DRIVER_VERSION,
    VLLM_VERSION,
)
from core.engines.vllm import VllmEngine
from core.errors import InvalidOptionsError
from core.hardware import Target
from core.plan import Options, plan
from core.sizing import GIB
from tests.unit.test_sizing import H100, RTX_4090, model_info


def test_engine_lookup() -> None:
    assert set(ENGINES) == {"vllm", "llama.cpp", "transformers"}
    assert isinstance(engine_for("vllm"), VllmEngine)
    assert isinstance(engine_for("transformers"), TransformersEngine)
    for name, engine in ENGINES.items():
        assert engine.name == name
        assert engine.health_path == "/health"
        assert engine.port == 8000
    assert engine_for("vllm").template == "vllm.Dockerfile.j2"
    assert engine_for("transformers").template == "transformers.Dockerfile.j2"
    assert engine_for("llama.cpp").template == "llamacpp.Dockerfile.j2"
    with pytest.raises(InvalidOptionsError, match=r"vllm, llama\.cpp, transformers"):
        engine_for("sglang")


def test_vllm_image_is_pinned_to_a_release_tag() -> None:
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", VLLM_IMAGE)
    assert VLLM_IMAGE.endswith(f":v{VLLM_VERSION}")
    assert f"{VLLM_IMAGE}-cu129" == VLLM_IMAGE_CUDA_12
    assert "latest" not in VLLM_IMAGE
    assert VLLM_MIN_COMPUTE_CAPABILITY == (7, 5)
    # the pinned minimum driver is NVIDIA's number for the image's CUDA
    assert CUDA_MIN_DRIVER[VLLM_IMAGE_CUDA_VERSION] == VLLM_MIN_DRIVER_VERSION
    engine = engine_for("vllm")
    assert engine.image_cuda_version(base_image=VLLM_IMAGE) == VLLM_IMAGE_CUDA_VERSION
    assert engine.image_cuda_version(base_image=VLLM_IMAGE_CUDA_12) == "12.9"
    assert engine.image_cuda_version(base_image="my.mirror/vllm:custom") is None
    p = plan(model=model_info("Qwen2.5-0.5B"), target=Target(gpus=(H100,), cuda_version="13.0"))
    assert engine.default_base_image(plan=p) == VLLM_IMAGE


def test_transformers_base_image_follows_the_device() -> None:
    model = model_info("Qwen2.5-0.5B")
    cpu = plan(model=model, target=Target(ram_bytes=16 * GIB))
    assert cpu.base_image == TRANSFORMERS_CPU_BASE_IMAGE
    gpu = plan(model=model, target=Target(gpus=(H100,), cuda_version="13.0"), options=Options(engine="transformers"))
    assert gpu.base_image == TRANSFORMERS_GPU_BASE_IMAGE
    # a GPU server whose model only fits in RAM runs on the CPU image
    small_gpu = replace(H100, memory_bytes=1 * GIB)
    in_ram = plan(
        model=model_info("Qwen2.5-7B-Instruct"),
        target=Target(gpus=(small_gpu,), cuda_version="13.0", ram_bytes=64 * GIB),
        options=Options(engine="transformers"),
    )
    assert in_ram.device == "cpu"
    assert in_ram.base_image == TRANSFORMERS_CPU_BASE_IMAGE


def test_vllm_serve_argv_carries_every_planned_value() -> None:
    p = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=Target(gpus=(RTX_4090,), cuda_version="13.0"),
    )
    spec = engine_for("vllm").run_spec(
        plan=p, image="ezrunner/x:1", model_dir="/models/Llama-3.1-8B-Instruct", served_model_name="llama"
    )
    argv = list(spec.default.argv)
    assert argv[:3] == ["vllm", "serve", "/models/Llama-3.1-8B-Instruct"]

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--served-model-name") == "llama"
    assert flag("--tensor-parallel-size") == "1"
    assert flag("--max-model-len") == str(p.max_model_len)
    assert flag("--gpu-memory-utilization") == "0.92"  # vLLM 0.33's default, always passed
    assert flag("--dtype") == "bfloat16"
    assert flag("--host") == "0.0.0.0"
    assert "--port" not in argv  # the entrypoint appends --port "${PORT}" (Options.port is its default)
    assert spec.port_flag == "--port" and spec.port == 8000
    assert spec.needs_gpus and spec.ipc_host
    assert spec.default.device == "cuda" and spec.default.gpus_per_node == 1
    assert spec.served_model_name == "llama" and spec.metrics_path == "/metrics"
    values = engine_for("vllm").template_values(plan=p, served_model_name="org/model", model_dir="/m")
    assert values == {"vllm_version": VLLM_VERSION}


def test_transformers_serve_argv_on_cpu() -> None:
    p = plan(model=model_info("Qwen2.5-0.5B"), target=Target(ram_bytes=16 * GIB))
    engine = engine_for(p.engine)
    spec = engine.run_spec(plan=p, image="ezrunner/x:1", model_dir="/models/Qwen2.5-0.5B", served_model_name="qwen")
    argv = list(spec.default.argv)
    # EZ Runner's proxy in front (API key, /metrics), then the server it starts: the hub id, resolved offline
    # through the HF-cache snapshot the template links to model_dir
    proxy = argv.index("--")
    assert argv[0] == "python3" and argv[1].endswith("serving_proxy.py")
    argv = argv[proxy + 1 :]
    assert argv[:3] == ["transformers", "serve", "qwen"]
    assert argv[argv.index("--device") + 1] == "cpu"
    assert argv[argv.index("--dtype") + 1] == "bfloat16"
    assert "--port" not in argv
    assert not spec.needs_gpus and not spec.ipc_host
    assert spec.metrics_path == "/metrics"  # the proxy's counters
    values = engine.template_values(plan=p, served_model_name="org/model", model_dir="/m")
    assert values["transformers_version"] == TRANSFORMERS_VERSION
    assert values["hf_cache_repo"] == "/home/ezrunner/.cache/huggingface/hub/models--org--model"
    assert values["snapshot"] == p.model.commit
    # the CPU image gets torch's CPU wheel, quoted for the shell
    assert values["pip_packages"] == (
        f"torch=={TORCH_CPU_VERSION} 'transformers[serving]=={TRANSFORMERS_VERSION}' "
        "--extra-index-url https://download.pytorch.org/whl/cpu"
    )


def test_transformers_on_a_gpu_needs_the_gpu_runtime() -> None:
    p = plan(
        model=model_info("Qwen2.5-0.5B"),
        target=Target(gpus=(H100,), cuda_version="13.0"),
        options=Options(engine="transformers"),
    )
    assert p.device == "cuda"
    engine = engine_for("transformers")
    spec = engine.run_spec(plan=p, image="ezrunner/x:1", model_dir="/m", served_model_name="m")
    assert spec.needs_gpus and spec.default.device == "cuda"
    pip = engine.template_values(plan=p, served_model_name="org/model", model_dir="/m")["pip_packages"]
    assert pip == f"'transformers[serving]=={TRANSFORMERS_VERSION}'"  # the CUDA base image has torch
    argv = list(spec.default.argv)
    assert argv[argv.index("--device") + 1] == "cuda"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("12.8", (12, 8)),
        ("570.124.06", (570, 124, 6)),
        ("13.0.3", (13, 0, 3)),
        ("550.54.15-beta", (550, 54, 15)),
    ],
)
def test_version_tuple(text: str, parsed: tuple[int, ...]) -> None:
    assert version_tuple(text) == parsed


@pytest.mark.parametrize(
    ("driver", "cuda"),
    [
        ("470.82.01", None),  # older than every CUDA 11.8+/12.x entry
        ("525.60.13", "12.0"),
        ("535.54.03", "12.2"),
        ("550.54.15", "12.4"),
        ("560.35.03", "12.6"),
        ("570.124.06", "12.8"),
        ("575.57.08", "12.9"),
        ("580.65.06", "13.0"),
        ("590.44.01", "13.0"),  # newer than the table: at least 13.0
    ],
)
def test_highest_cuda_for_driver(driver: str, cuda: str | None) -> None:
    assert highest_cuda_for_driver(driver) == cuda


@pytest.mark.parametrize(
    ("target", "ok", "target_cuda"),
    [
        (Target(gpus=(H100,), cuda_version="13.0"), True, "13.0"),
        (Target(gpus=(H100,), cuda_version="13.2"), True, "13.2"),
        (Target(gpus=(H100,), cuda_version="12.9"), False, "12.9"),
        (Target(gpus=(H100,), driver_version="580.82.07"), True, "13.0"),
        (Target(gpus=(H100,), driver_version="570.124.06"), False, "12.8"),
        (Target(gpus=(H100,), driver_version="470.82.01"), False, "11.7"),
        (Target(gpus=(H100,)), None, None),
    ],
)
def test_check_driver_against_the_vllm_image(
    target: Target, ok: bool | None, target_cuda: str | None
) -> None:
    check = check_driver(target=target, image_cuda=VLLM_IMAGE_CUDA_VERSION)
    assert check.ok is ok
    assert check.target_cuda == target_cuda
    assert check.min_driver == "580.65.06"


def test_check_driver_against_the_transformers_gpu_image() -> None:
    check = check_driver(target=Target(gpus=(H100,), driver_version="570.124.06"), image_cuda="12.8")
    assert check.ok is True
    check = check_driver(target=Target(gpus=(H100,), driver_version="550.54.15"), image_cuda="12.8")
    assert check.ok is False and check.min_driver == "570.26"
