"""The llama.cpp engine: which GGUF quantization, how many layers on the GPU, the split, context and slots,
and how the planner chooses llama.cpp (GGUF models, old and non-NVIDIA GPUs, a quantization asked for)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from core.engines.llamacpp import (
    CUDA_RUNTIME_BYTES,
    HEALTHCHECK,
    LlamaCppEngine,
    candidates,
    settings_from_plan,
    synthetic_header,
)
from core.engines.versions import LLAMA_CPP_CPU_IMAGE, LLAMA_CPP_CUDA_IMAGE, LLAMA_CPP_ROCM_IMAGE
from core.errors import InvalidOptionsError
from core.gguf import group_gguf_files
from core.hardware import Gpu, Target
from core.hubs.base import GgufRepo, ModelFile, ModelInfo
from core.llamacpp_memory import memory_estimate
from core.plan import Options, Plan, plan, plan_to_dict
from core.render import render
from core.runspec import run_spec_from_labels
from core.sizing import GIB
from tests.unit.test_sizing import H100, L4, RTX_4090, T4, V100, model_info

GOLDEN = Path(__file__).parent / "golden"
QUANTS = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")


def gguf_repo(name: str, quants: tuple[str, ...] = QUANTS) -> ModelInfo:
    """A GGUF repository of the model ``name`` (tests/unit/configs) offering ``quants``, as a hub would
    describe it: every variant listed with its size, one header read (Q4_K_M's)."""
    base = model_info(name)
    headers = {q: synthetic_header(model=base, quant=q) for q in quants}
    listing = group_gguf_files(
        (f"{name}-{q}.gguf", headers[q].data_offset + headers[q].tensor_bytes) for q in quants
    )
    keys = {v.quant: v.key for v in listing.variants}
    reference = keys["Q4_K_M"] if "Q4_K_M" in keys else listing.variants[0].key
    return dataclasses.replace(
        base,
        repo_id=f"org/{name}-GGUF",
        files=tuple(ModelFile(path=f.path, size=f.size) for v in listing.variants for f in v.files),
        format="gguf",
        gguf=GgufRepo(listing=listing, headers={reference: headers["Q4_K_M" if "Q4_K_M" in headers else quants[0]]},
                      reference=reference),
    )


def target(gpu: Gpu | None = None, count: int = 1, *, ram_gib: int = 64, cores: int | None = 16) -> Target:
    gpus = tuple(dataclasses.replace(gpu, index=i) for i in range(count)) if gpu else ()
    return Target(gpus=gpus, cuda_version="13.0", driver_version="580.82.07", ram_bytes=ram_gib * GIB,
                  cpu_cores=cores)


def warning_codes(p: Plan) -> set[str]:
    return {w.code for w in p.warnings}


def reason(p: Plan, code: str) -> str:
    return next(n.text for n in p.reasons if n.code == code)


# CHOOSING LLAMA.CPP


def test_a_gguf_model_gets_llamacpp_on_a_cpu_target() -> None:
    p = plan(model=gguf_repo("Llama-3.1-8B-Instruct"), target=target(ram_gib=32))
    assert (p.engine, p.device, p.fits) == ("llama.cpp", "cpu", True)
    assert "GGUF" in reason(p, "engine_gguf")
    assert p.base_image == LLAMA_CPP_CPU_IMAGE
    assert p.settings["n_gpu_layers"] == 0 and p.settings["threads"] == 16
    # only the chosen variant's file is packed
    ggufs = [f.path for f in p.model.files if f.path.endswith(".gguf")]
    assert ggufs == [p.settings["model_file"]] and p.settings["quant"] in p.settings["model_file"]


def test_the_most_bits_per_weight_that_fits_is_chosen_and_the_others_are_listed() -> None:
    repo = gguf_repo("Llama-3.1-8B-Instruct")
    # an RTX 4090 (24 GB): F16 (16 GB) cannot hold the 128k context next to it, Q8_0 cannot either; the plan
    # takes the most bits per weight that holds the model's whole context
    p = plan(model=repo, target=target(RTX_4090))
    assert (p.engine, p.device, p.fits) == ("llama.cpp", "cuda", True)
    chosen = p.settings["quant"]
    assert p.max_model_len == 131_072 or chosen == "Q4_K_M"
    text = reason(p, "gguf_quant")
    assert chosen in text and "Others:" in text
    for other in QUANTS:
        if other != chosen:
            assert other in text
    # every quantization with more bits does not fit the full context on this card
    bits = {c.quant: c.bits for c in candidates(repo)}
    assert all(bits[q] <= bits[chosen] or q not in bits for q in QUANTS if q == chosen)
    # a bigger card takes more bits
    big = plan(model=repo, target=target(H100))
    assert bits[big.settings["quant"]] >= bits[chosen]
    assert big.settings["quant"] == "F16" and big.max_model_len == 131_072


def test_budgets_hold_and_include_the_cuda_runtime() -> None:
    repo = gguf_repo("Qwen2.5-7B-Instruct")
    p = plan(model=repo, target=target(L4))
    assert p.fits and p.device == "cuda"
    (gpu,) = p.per_gpu
    assert gpu.used_bytes <= gpu.capacity_bytes <= gpu.total_bytes
    assert gpu.overhead_bytes > CUDA_RUNTIME_BYTES  # compute buffer + CUDA context
    # the figures are llama.cpp's own placement of these settings' buffers
    header = next(c.header for c in candidates(repo) if c.quant == p.settings["quant"])
    estimate = memory_estimate(header=header, settings=settings_from_plan(p), gpu_shares=(1.0,), backend="cuda")
    assert gpu.weights_bytes == estimate.gpus[0].weights
    assert gpu.kv_cache_bytes == estimate.gpus[0].kv_cache


def test_slots_fill_spare_gpu_memory_up_to_four() -> None:
    p = plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(H100))
    assert p.settings["n_parallel"] == 4 and p.max_concurrency == 4.0
    assert p.settings["n_ctx"] == 4 * p.max_model_len
    forced = plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(H100), options=Options(parallel=2))
    assert forced.settings["n_parallel"] == 2


def test_a_model_too_big_for_the_gpu_is_partly_offloaded() -> None:
    small = Gpu(name="NVIDIA GeForce RTX 4060", memory_bytes=8 * GIB, compute_capability=(8, 9))
    p = plan(model=gguf_repo("Llama-3.1-8B-Instruct", ("F16", "Q8_0")), target=target(small, ram_gib=64))
    assert p.fits and p.engine == "llama.cpp"
    assert p.settings["offload"] == "partial"
    layers = p.settings["n_gpu_layers"]
    assert 0 < layers < 33
    assert f"-ngl {layers}" in reason(p, "llamacpp_partial_offload")
    spec = render(plan=p).run_spec
    argv = list(spec.default.argv)
    assert argv[argv.index("-ngl") + 1] == str(layers)


def test_two_small_gpus_split_the_layers() -> None:
    p = plan(model=gguf_repo("Llama-3.1-8B-Instruct", ("F16",)), target=target(T4, 2))
    assert p.fits and p.settings["offload"] == "gpu"
    assert p.settings["gpus_used"] == 2 and p.settings["split_mode"] == "layer"
    assert len(p.per_gpu) == 2 and all(b.weights_bytes > 0 for b in p.per_gpu)
    assert sum(p.settings["tensor_split"]) == pytest.approx(100, abs=0.2)
    argv = list(render(plan=p).run_spec.default.argv)
    assert argv[argv.index("-sm") + 1] == "layer" and "-ts" in argv


def test_forced_quant_must_exist_and_the_message_lists_what_does() -> None:
    with pytest.raises(InvalidOptionsError) as error:
        plan(model=gguf_repo("Qwen2.5-7B-Instruct", ("Q4_K_M", "Q8_0")), target=target(L4),
             options=Options(quant="Q3_K_S"))
    assert "Q3_K_S" in str(error.value) and "Q4_K_M" in str(error.value) and "Q8_0" in str(error.value)
    p = plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(H100), options=Options(quant="Q8_0"))
    assert p.settings["quant"] == "Q8_0"


def test_a_forced_context_that_does_not_fit_is_a_hard_failure_with_the_fix() -> None:
    p = plan(model=gguf_repo("Llama-3.1-8B-Instruct", ("F16",)), target=target(L4),
             options=Options(max_model_len=131_072))
    assert not p.fits
    warning = next(w for w in p.warnings if w.code == "max_model_len_too_long")
    fix = warning.change["max_model_len"]
    assert 0 < fix < 131_072
    assert plan(model=gguf_repo("Llama-3.1-8B-Instruct", ("F16",)), target=target(L4),
                options=Options(max_model_len=fix)).fits


def test_nothing_fits_names_the_shortfall() -> None:
    p = plan(model=gguf_repo("Llama-3.1-70B", ("Q4_K_M",)), target=target(ram_gib=16))
    assert not p.fits
    (warning,) = [w for w in p.warnings if w.code == "weights_do_not_fit"]
    assert "Q4_K_M" in warning.text and "GiB" in warning.text


def test_gguf_on_a_big_nvidia_gpu_says_what_vllm_would_give() -> None:
    p = plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(H100))
    assert p.engine == "llama.cpp"
    warning = next(w for w in p.warnings if w.code == "vllm_would_serve_more")
    assert "vLLM" in warning.text and warning.params["vllm_kv_tokens"] > p.kv_cache_tokens


def test_a_safetensors_model_on_a_cpu_is_offered_the_gguf_route() -> None:
    p = plan(model=model_info("Qwen2.5-7B-Instruct"), target=target(ram_gib=64))
    assert p.engine == "transformers"
    route = next(w for w in p.warnings if w.code == "gguf_route")
    assert route.change == {"engine": "llama.cpp"}
    converted = plan(model=model_info("Qwen2.5-7B-Instruct"), target=target(ram_gib=64),
                     options=Options(**route.change))
    assert converted.engine == "llama.cpp" and converted.settings["convert"]["quant"] == converted.dtype


def test_safetensors_on_a_v100_is_converted_for_llamacpp_and_says_why() -> None:
    files = (ModelFile("config.json", 700), ModelFile("model.safetensors", 15 * GIB), ModelFile("LICENSE", 11_000))
    model = dataclasses.replace(model_info("Qwen2.5-7B-Instruct"), files=files)
    p = plan(model=model, target=target(V100))
    assert (p.engine, p.device) == ("llama.cpp", "cuda")
    assert p.base_image == LLAMA_CPP_CUDA_IMAGE
    why = reason(p, "engine_old_gpu_llamacpp")
    assert "7.0" in why and "converted to GGUF" in why
    convert = p.settings["convert"]
    assert convert["output"] == p.settings["model_file"] and convert["download"]
    assert {f["path"] for f in convert["download"]} == {f.path for f in files}
    # the pack carries the converted GGUF and the licence, not the safetensors
    assert sorted(f.path for f in p.model.files) == sorted(["LICENSE", p.settings["model_file"]])


def test_amd_gpus_get_the_rocm_image() -> None:
    mi = Gpu(name="AMD Instinct MI300X", memory_bytes=192 * GIB, compute_capability=(0, 0), vendor="amd")
    p = plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=Target(gpus=(mi,), ram_bytes=256 * GIB))
    assert (p.engine, p.device, p.base_image) == ("llama.cpp", "rocm", LLAMA_CPP_ROCM_IMAGE)
    flags = render(plan=p).run_command()
    assert "--device /dev/kfd" in flags and "--gpus" not in flags


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (Options(engine="llama.cpp", tensor_parallel_size=2), "tensor parallelism"),
        (Options(engine="llama.cpp", dtype="bfloat16"), "--quant"),
        (Options(engine="llama.cpp", gpu_memory_utilization=0.8), "vLLM setting"),
        (Options(engine="llama.cpp", kv_cache_type="q3_k"), "KV cache types"),
    ],
)
def test_options_llamacpp_cannot_honour_are_refused(options: Options, words: str) -> None:
    with pytest.raises(InvalidOptionsError, match=re.escape(words)):
        plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(L4, 2), options=options)


def test_vllm_and_transformers_refuse_gguf() -> None:
    for engine in ("vllm", "transformers"):
        with pytest.raises(InvalidOptionsError, match="GGUF"):
            plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(H100), options=Options(engine=engine))


# RUN SPEC, DOCKERFILE AND JSON


def test_run_spec_carries_the_plan_and_a_health_check_without_python() -> None:
    p = plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(L4))
    spec = render(plan=p)
    run_spec = spec.run_spec
    argv = list(run_spec.default.argv)
    assert argv[0] == "llama-server"
    assert argv[argv.index("-m") + 1] == f"{spec.model_root}/{p.settings['model_file']}"
    assert argv[argv.index("--alias") + 1] == "org/Qwen2.5-7B-Instruct-GGUF"
    for flag, value in (("-c", p.settings["n_ctx"]), ("-np", p.settings["n_parallel"]),
                        ("-ngl", p.settings["n_gpu_layers"]), ("--fit", "off"), ("--threads", 16)):
        assert argv[argv.index(flag) + 1] == str(value)
    assert "--metrics" in argv and "--port" not in argv
    assert run_spec.healthcheck == HEALTHCHECK and "python3" not in " ".join(HEALTHCHECK)
    assert run_spec.metrics_path == "/metrics" and not run_spec.ipc_host
    assert run_spec_from_labels(dict(spec.labels)) == run_spec
    # the JSON view carries the settings so a recorded plan can be reproduced
    data = json.loads(json.dumps(plan_to_dict(p)))
    assert data["engine"] == "llama.cpp" and data["settings"]["quant"] == p.settings["quant"]
    assert data["max_concurrency"] == p.settings["n_parallel"]


def test_dockerfile_and_run_spec_match_golden() -> None:
    p = plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(L4))
    spec = render(plan=p)
    _golden("llamacpp-qwen2.5-7b-gguf-l4.Dockerfile", spec.dockerfile)
    run = json.dumps(json.loads(dict(spec.labels)["io.ezrunner.run-spec"]), indent=1, sort_keys=True) + "\n"
    _golden("llamacpp-qwen2.5-7b-gguf-l4.run-spec.json", run)
    cpu = render(plan=plan(model=model_info("Qwen2.5-0.5B"), target=target(ram_gib=8, cores=4),
                           options=Options(engine="llama.cpp", quant="Q8_0")))
    _golden("llamacpp-qwen2.5-0.5b-convert-cpu.Dockerfile", cpu.dockerfile)


def _golden(name: str, text: str) -> None:
    import os

    path = GOLDEN / name
    if os.environ.get("EZRUNNER_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"missing golden file {path}: run with EZRUNNER_UPDATE_GOLDEN=1 once and review it"
    assert text == path.read_text(encoding="utf-8"), f"{name} changed: review, then EZRUNNER_UPDATE_GOLDEN=1"


def test_engine_facts() -> None:
    engine = LlamaCppEngine()
    assert engine.name == "llama.cpp" and engine.formats == {"gguf", "safetensors"}
    assert engine.image_cuda_version(base_image=LLAMA_CPP_CUDA_IMAGE) == "12.8"
    assert engine.image_cuda_version(base_image=LLAMA_CPP_CPU_IMAGE) is None
