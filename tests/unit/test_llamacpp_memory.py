"""core.llamacpp_memory against llama-server's own logs (CPU, build b11312) and llama.cpp's placement rules.

The logs and header digests in fixtures/llamacpp_logs come from capture.py there (README.md: how they were made).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import pytest

from core.errors import InvalidOptionsError, PlanError
from core.gguf import GgufArraySummary, GgufHeader, GgufTensor, read_gguf_header
from core.llamacpp_memory import (
    LlamaCppSettings,
    compute_buffer_bytes,
    context_shape,
    kv_cache_bytes,
    layer_devices,
    max_context_that_fits,
    max_gpu_layers_that_fit,
    memory_estimate,
    output_buffer_bytes,
    server_arguments,
    weights_placement,
)
from tests.fixtures.tiny_gguf import gguf_bytes

LOGS = Path(__file__).parent / "fixtures" / "llamacpp_logs"
MiB = 1 << 20


def load_digest(name: str) -> GgufHeader:
    data = json.loads((LOGS / name).read_text(encoding="utf-8"))

    def value(raw: object) -> object:
        if isinstance(raw, dict) and "__array__" in raw:
            return GgufArraySummary(raw["__array__"], raw["length"])
        if isinstance(raw, list):
            return tuple(value(v) for v in raw)
        return raw

    return GgufHeader(
        file=data["file"],
        version=data["version"],
        metadata=MappingProxyType({k: value(v) for k, v in data["metadata"].items()}),  # type: ignore[misc]
        tensors=tuple(GgufTensor(n, tuple(s), t, o, b) for n, s, t, o, b in data["tensors"]),
        alignment=data["alignment"],
        data_offset=data["data_offset"],
    )


@dataclass(frozen=True)
class Run:
    name: str
    text: str
    header: GgufHeader
    n_ctx: int
    n_parallel: int
    kv_unified: bool
    n_batch: int
    n_ubatch: int
    flash_attn: bool
    cache_type_k: str
    cache_type_v: str
    swa_full: bool

    def logged(self, pattern: str) -> list[str]:
        return re.findall(pattern, self.text)

    def kwargs(self) -> dict[str, object]:
        return {"n_ctx": self.n_ctx, "n_parallel": self.n_parallel, "kv_unified": self.kv_unified,
                "n_batch": self.n_batch, "n_ubatch": self.n_ubatch, "flash_attn": self.flash_attn,
                "cache_type_k": self.cache_type_k, "cache_type_v": self.cache_type_v, "swa_full": self.swa_full}


def _run(path: Path) -> Run:
    text = path.read_text(encoding="utf-8")
    command = text.splitlines()[0]

    def flag(name: str, default: str) -> str:
        match = re.search(rf" {re.escape(name)} (\S+)", command)
        return match.group(1) if match else default

    model = re.search(r" -m (\S+)\.gguf", command)
    assert model is not None
    # "-fa auto" resolves to enabled on the CPU backend; the log says which
    flash = re.search(r"llama_context: flash_attn\s+= (\w+)", text)
    assert flash is not None
    enabled = flash.group(1) == "enabled" or (flash.group(1) == "auto" and "Flash Attention enabled" in text)
    return Run(
        name=path.stem, text=text, header=load_digest(model.group(1) + ".header.json"),
        n_ctx=int(flag("-c", "0")), n_parallel=int(flag("-np", "1")), kv_unified=" -kvu" in command,
        n_batch=int(flag("-b", "2048")), n_ubatch=int(flag("-ub", "512")), flash_attn=enabled,
        cache_type_k=flag("-ctk", "f16"), cache_type_v=flag("-ctv", "f16"), swa_full="--swa-full" in command,
    )


RUNS = sorted(LOGS.glob("*.log"))


def test_the_fixture_logs_are_there() -> None:
    assert len(RUNS) >= 30
    models = {_run(p).header.model.architecture for p in RUNS}
    assert models == {"llama", "gemma3", "qwen2", "qwen3moe"}


@pytest.fixture(params=RUNS, ids=[p.stem for p in RUNS])
def run(request: pytest.FixtureRequest) -> Run:
    return _run(request.param)


def _mib(value: int) -> str:
    return f"{value / MiB:.2f}"


def test_context_shape_is_what_llama_context_logs(run: Run) -> None:
    shape = context_shape(n_ctx=run.n_ctx, n_parallel=run.n_parallel, kv_unified=run.kv_unified,
                          n_batch=run.n_batch, n_ubatch=run.n_ubatch)
    for field in ("n_ctx", "n_ctx_seq", "n_batch", "n_ubatch"):
        (logged,) = run.logged(rf"llama_context: {field}\s+= (\d+)")
        assert getattr(shape, field) == int(logged), field


def test_kv_cache_is_exact(run: Run) -> None:
    model = run.header.model
    kv = kv_cache_bytes(model=model, **run.kwargs())  # type: ignore[arg-type]
    pattern = (r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*\d+/(\d+) seqs\), "
               r"K \(\w+\):\s+([\d.]+) MiB, V \(\w+\):\s+([\d.]+) MiB")
    lines: list[tuple[str, ...]] = re.findall(pattern, run.text)
    groups = [[il for il in range(model.n_layer) if not model.is_swa_layer(il)]]
    if kv.swa_cells is not None:  # llama_kv_cache_iswa logs the full cache first, then the SWA one
        groups.append([il for il in range(model.n_layer) if model.is_swa_layer(il)])
    assert len(lines) == len(groups)
    for (size, cells, layers, streams, _k, _v), group in zip(lines, groups, strict=True):
        assert _mib(sum(kv.layer_bytes[il] for il in group)) == size
        assert int(cells) == (kv.cells if group is groups[0] else kv.swa_cells)
        assert int(layers) == len(group) and int(streams) == kv.n_stream
    if len(lines) == 1:
        assert (_mib(kv.k_bytes), _mib(kv.v_bytes)) == lines[0][4:]
    for cells in run.logged(r"creating     SWA KV cache, size = (\d+) cells"):
        assert int(cells) == kv.swa_cells


def test_compute_buffer_is_not_below_the_log_nor_ten_percent_above(run: Run) -> None:
    (logged,) = run.logged(r"CPU compute buffer size is\s+([\d.]+) MiB")
    ours = compute_buffer_bytes(header=run.header, backend="cpu", **run.kwargs()) / MiB  # type: ignore[arg-type]
    assert float(logged) - 0.00005 <= ours <= float(logged) * 1.10
    # the rebuilt graph and allocator give the allocator's own figure, to the 4 decimals the log has
    assert f"{ours:.4f}" == logged


def test_weights_in_host_memory_match_the_model_buffers(run: Run) -> None:
    placement = weights_placement(header=run.header, n_gpu_layers=0, gpu_shares=())
    assert placement.gpu_bytes == () and placement.host_bytes == run.header.tensor_bytes
    found: list[tuple[str, str]] = re.findall(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+)", run.text)
    buffers = {name: float(size) for name, size in found}
    if "CPU_Mapped" in buffers and "CPU_REPACK" in buffers:
        # with mmap the mapping spans the repacked tensors' file pages too; the weights are there once
        assert buffers["CPU_Mapped"] * MiB <= placement.host_bytes <= sum(buffers.values()) * MiB
    else:
        # within 1 %, or within the 2-decimal MiB rounding of the log for the tiny models
        logged = sum(buffers.values())
        assert abs(placement.host_bytes / MiB - logged) <= max(0.01 * logged, 0.005 * len(buffers))


def test_output_buffer_matches(run: Run) -> None:
    (logged,) = run.logged(r"CPU  output buffer size =\s+([\d.]+) MiB")
    assert _mib(output_buffer_bytes(model=run.header.model, n_parallel=run.n_parallel)) == logged


# PLACEMENT RULES (src/llama-model.cpp:1557-1614)


def test_the_output_layer_is_offloaded_first_and_input_embeddings_never() -> None:
    assert layer_devices(n_layer_all=16, n_gpu_layers=0, gpu_shares=(1.0,)) == ((-1,) * 16, -1)
    assert layer_devices(n_layer_all=16, n_gpu_layers=1, gpu_shares=(1.0,)) == ((-1,) * 16, 0)
    assert layer_devices(n_layer_all=16, n_gpu_layers=5, gpu_shares=(1.0,)) == ((-1,) * 12 + (0,) * 4, 0)
    assert layer_devices(n_layer_all=16, n_gpu_layers=17, gpu_shares=(1.0,)) == ((0,) * 16, 0)
    assert layer_devices(n_layer_all=16, n_gpu_layers=-1, gpu_shares=(1.0,)) == ((0,) * 16, 0)
    assert layer_devices(n_layer_all=16, n_gpu_layers=99, gpu_shares=()) == ((-1,) * 16, -1)  # no GPU


def test_layers_split_by_tensor_split_proportions() -> None:
    devices, output = layer_devices(n_layer_all=16, n_gpu_layers=17, gpu_shares=(1.0, 1.0))
    # layer il goes to the first GPU whose cumulative share exceeds il/17
    assert devices == (0,) * 9 + (1,) * 7 and output == 1
    devices, output = layer_devices(n_layer_all=16, n_gpu_layers=17, gpu_shares=(3.0, 1.0))
    assert devices == (0,) * 13 + (1,) * 3 and output == 1
    devices, output = layer_devices(n_layer_all=16, n_gpu_layers=9, gpu_shares=(1.0, 1.0))
    assert devices == (-1,) * 8 + (0,) * 5 + (1,) * 3 and output == 1


def _header(tensors: list[tuple[str, tuple[int, ...], str]], **extra: object) -> GgufHeader:
    meta = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 256,
            "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2, "llama.feed_forward_length": 512,
            "llama.context_length": 4096, "tokenizer.ggml.tokens": [f"t{i}" for i in range(1024)], **extra}
    blob, _ = gguf_bytes(meta, tensors)
    return read_gguf_header(read_at=lambda offset, length: blob[offset : offset + length], file="m.gguf")


_LAYERS = [
    (f"blk.{i}.{name}", shape, "F16")
    for i in range(2)
    for name, shape in (("attn_q.weight", (256, 256)), ("attn_k.weight", (256, 128)), ("attn_v.weight", (256, 128)),
                        ("attn_output.weight", (256, 256)), ("ffn_up.weight", (256, 512)),
                        ("ffn_gate.weight", (256, 512)), ("ffn_down.weight", (512, 256)))
] + [(f"blk.{i}.attn_norm.weight", (256,), "F32") for i in range(2)]
_EMBED = ("token_embd.weight", (256, 1024), "F16")
_EMBED_BYTES = 256 * 1024 * 2


def test_a_tied_output_head_is_copied_to_the_gpu() -> None:
    tied = _header([_EMBED, ("output_norm.weight", (256,), "F32"), *_LAYERS])
    full = weights_placement(header=tied, n_gpu_layers=3, gpu_shares=(1.0,))
    assert full.host_bytes == _EMBED_BYTES  # token_embd stays on the host ...
    assert full.gpu_bytes[0] == tied.tensor_bytes - _EMBED_BYTES + _EMBED_BYTES  # ... and is copied for the head
    cpu = weights_placement(header=tied, n_gpu_layers=0, gpu_shares=(1.0,))
    assert cpu.host_bytes == tied.tensor_bytes and cpu.gpu_bytes == (0,)  # on the host it is the same tensor
    untied = _header([_EMBED, ("output.weight", (256, 1024), "F16"), ("output_norm.weight", (256,), "F32"), *_LAYERS])
    head_only = weights_placement(header=untied, n_gpu_layers=1, gpu_shares=(1.0,))
    assert head_only.gpu_bytes == (_EMBED_BYTES + 256 * 4,)


def test_row_split_divides_matrices_by_shares() -> None:
    header = _header([_EMBED, ("output.weight", (256, 1024), "F16"), ("output_norm.weight", (256,), "F32"), *_LAYERS])
    layer = weights_placement(header=header, n_gpu_layers=3, gpu_shares=(1.0, 1.0), split_mode="layer")
    row = weights_placement(header=header, n_gpu_layers=3, gpu_shares=(1.0, 1.0), split_mode="row")
    assert sum(layer.gpu_bytes) == sum(row.gpu_bytes) == header.tensor_bytes - _EMBED_BYTES
    assert abs(row.gpu_bytes[0] - row.gpu_bytes[1]) < 4096 < abs(layer.gpu_bytes[0] - layer.gpu_bytes[1])
    none = weights_placement(header=header, n_gpu_layers=3, gpu_shares=(1.0, 1.0), split_mode="none")
    assert none.gpu_bytes == (header.tensor_bytes - _EMBED_BYTES,)


def test_kv_follows_its_layer_to_the_device() -> None:
    header = _header([_EMBED, ("output_norm.weight", (256,), "F32"), *_LAYERS])
    placement = weights_placement(header=header, n_gpu_layers=2, gpu_shares=(1.0,))
    kv = kv_cache_bytes(model=header.model, n_ctx=1024)
    gpus, host = kv.on_devices(placement.layer_devices, 1)
    per_layer = 2 * 2 * 64 * 1024 * 2  # K and V, 2 heads of 64, 1024 cells, f16
    assert (gpus, host) == ((per_layer,), per_layer)


# KV RULES


def test_latent_attention_caches_k_only_and_shared_layers_none() -> None:
    mla = _header([], **{"general.architecture": "deepseek2", "deepseek2.block_count": 2,
                         "deepseek2.embedding_length": 256, "deepseek2.attention.head_count": 4,
                         "deepseek2.attention.head_count_kv": 1, "deepseek2.attention.key_length": 576,
                         "deepseek2.attention.key_length_mla": 192, "deepseek2.attention.value_length_mla": 128})
    kv = kv_cache_bytes(model=mla.model, n_ctx=1024)
    assert kv.v_bytes == 0 and kv.k_bytes == 2 * 576 * 1024 * 2
    with pytest.raises(InvalidOptionsError, match="different K"):
        kv_cache_bytes(model=mla.model, n_ctx=1024, cache_type_k="q8_0")


def test_quantized_v_needs_flash_attention_and_block_aligned_rows() -> None:
    header = _header([])
    with pytest.raises(InvalidOptionsError, match="without flash attention"):
        kv_cache_bytes(model=header.model, n_ctx=1024, cache_type_v="q8_0", flash_attn=False)
    with pytest.raises(InvalidOptionsError, match="not a KV cache type"):
        kv_cache_bytes(model=header.model, n_ctx=1024, cache_type_k="q4_k")
    # the tiny Llama's heads of 16 values cannot hold 32-value q8_0 blocks: llama-server refuses to start
    # ("K cache type q8_0 with block size 32 does not divide n_embd_head_k=16")
    odd = _header([], **{"llama.attention.key_length": 16, "llama.attention.value_length": 16})
    with pytest.raises(InvalidOptionsError, match="K cache needs heads that are multiples of 32 values; layer 0"):
        kv_cache_bytes(model=odd.model, n_ctx=1024, cache_type_k="q8_0")


def test_recurrent_models_are_not_sized() -> None:
    mamba = _header([], **{"general.architecture": "mamba", "mamba.block_count": 2, "mamba.embedding_length": 256,
                           "mamba.attention.head_count": 0})
    with pytest.raises(PlanError, match="cannot size the memory of a 'mamba' model"):
        kv_cache_bytes(model=mamba.model, n_ctx=1024)


# FITTING AND FLAGS


def test_max_context_is_the_largest_that_fits() -> None:
    header = load_digest("llama-3.2-1b-Q4_K_M.header.json")
    settings = LlamaCppSettings(n_ctx=4096, n_gpu_layers=17)
    budget = 2 << 30
    best = max_context_that_fits(header=header, settings=settings, gpu_free_bytes=[budget], host_free_bytes=8 << 30)
    assert best is not None and best % 256 == 0

    def used(n_ctx: int) -> int:
        from dataclasses import replace

        estimate = memory_estimate(header=header, settings=replace(settings, n_ctx=n_ctx), gpu_shares=(1.0,))
        return estimate.gpus[0].total

    assert used(best) <= budget < used(best + 256)
    assert max_context_that_fits(header=header, settings=settings, gpu_free_bytes=[1 << 20],
                                 host_free_bytes=8 << 30) is None


def test_max_gpu_layers_leaves_the_rest_on_the_host() -> None:
    header = load_digest("llama-3.2-1b-F16.header.json")
    settings = LlamaCppSettings(n_ctx=4096)
    all_layers = max_gpu_layers_that_fit(header=header, settings=settings, gpu_free_bytes=[8 << 30],
                                         host_free_bytes=16 << 30)
    assert all_layers == 17
    some = max_gpu_layers_that_fit(header=header, settings=settings, gpu_free_bytes=[1 << 30], host_free_bytes=16 << 30)
    assert some is not None and 0 < some < 17
    from dataclasses import replace

    estimate = memory_estimate(header=header, settings=replace(settings, n_gpu_layers=some), gpu_shares=(1.0,))
    assert estimate.gpus[0].total <= 1 << 30 and estimate.host.weights > 0 and estimate.host.kv_cache > 0


def test_server_arguments_pin_every_default_that_moves() -> None:
    settings = LlamaCppSettings(n_ctx=8192, n_parallel=2, n_gpu_layers=33, tensor_split=(3.0, 1.0),
                                cache_type_k="q8_0", cache_type_v="q8_0")
    args = server_arguments(settings)
    pairs = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("-")}
    assert pairs["--fit"] == "off" and pairs["-c"] == "8192" and pairs["-np"] == "2" and pairs["-ngl"] == "33"
    assert pairs["-fa"] == "on" and pairs["-ctk"] == "q8_0" and pairs["--cache-ram"] == "0"
    assert "--no-kv-unified" in args and args[args.index("-ts") + 1] == "3,1" and args[args.index("-sm") + 1] == "layer"


def test_a_70b_shaped_header_is_sized_without_any_data() -> None:
    layers = 80
    tensors = [("token_embd.weight", (8192, 128256), "Q4_K"), ("output.weight", (8192, 128256), "Q6_K"),
               ("output_norm.weight", (8192,), "F32")]
    for i in range(layers):
        tensors += [(f"blk.{i}.attn_q.weight", (8192, 8192), "Q4_K"), (f"blk.{i}.attn_k.weight", (8192, 1024), "Q4_K"),
                    (f"blk.{i}.attn_v.weight", (8192, 1024), "Q6_K"),
                    (f"blk.{i}.attn_output.weight", (8192, 8192), "Q4_K"),
                    (f"blk.{i}.ffn_gate.weight", (8192, 28672), "Q4_K"),
                    (f"blk.{i}.ffn_up.weight", (8192, 28672), "Q4_K"),
                    (f"blk.{i}.ffn_down.weight", (28672, 8192), "Q6_K"), (f"blk.{i}.attn_norm.weight", (8192,), "F32"),
                    (f"blk.{i}.ffn_norm.weight", (8192,), "F32")]
    header = _header(tensors, **{"llama.block_count": layers, "llama.embedding_length": 8192,
                                 "llama.attention.head_count": 64, "llama.attention.head_count_kv": 8,
                                 "llama.feed_forward_length": 28672, "llama.context_length": 131072})
    kv = kv_cache_bytes(model=header.model, n_ctx=32768)
    assert kv.total == 80 * 2 * 8 * 128 * 32768 * 2  # 10 GiB of f16 KV for 32k tokens
    compute = compute_buffer_bytes(header=header, n_ctx=32768, flash_attn=False)
    assert compute > 32768 * 512 * 64 * 4  # the attention scores of one ubatch alone
    two_gpus = weights_placement(header=header, n_gpu_layers=81, gpu_shares=(1.0, 1.0))
    assert two_gpus.host_bytes == header.tensors[0].nbytes and sum(two_gpus.gpu_bytes) > 38 << 30
