"""Where llama.cpp build b11312 really puts memory, computed from a GGUF header before anything is started.

Four parts, each following the code that decides it (paths are in the pinned tree, ``core.llamacpp_source``):

- weights: ``llama_model_base::load_tensors`` (src/llama-model.cpp:1505-1614). The input embeddings always stay
  in host memory; with ``-ngl N`` the *last* N of the n_layer+1 "layers" (the repeating blocks plus the output
  layer, which counts as one) go to the GPUs, split by ``--tensor-split`` proportions. So the output layer is
  the first thing offloaded (``-ngl 1`` puts only the output head on the GPU) and ``-ngl n_layer+1`` is full.
- KV cache: ``llama_kv_cache`` (src/llama-kv-cache.cpp:66-300), per layer on that layer's device: K is
  ``n_embd_head_k * n_head_kv`` values per cell, V likewise (padded to the widest layer without flash
  attention), times cells times streams. Sliding-window layers get a smaller cache
  (src/llama-kv-cache-iswa.cpp:70-80).
- compute buffer: ``ggml_gallocr`` (ggml/src/ggml-alloc.c) packs the intermediate tensors of the worst-case
  graph (one ubatch of ``min(n_ctx, n_ubatch)`` tokens, src/llama-context.cpp:625-730) into one buffer per
  backend. This module rebuilds that graph for the decoder families it knows and runs the same allocator
  (best-fit free list, in-place reuse rules, inputs allocated first), so the figure is the allocator's own.
- output buffer: logits for ``max(n_outputs, n_seq_max)`` rows in host memory (src/llama-context.cpp:2116-2180).

Server facts (tools/server/server.cpp:156-160, common/common.h:450-640, common/arg.cpp): ``-np`` defaults to
"auto" = 4 slots with a unified KV cache, ``-c 0`` means the trained context, ``-b 2048 -ub 512``,
``-fa auto``, ``-ngl auto`` and ``--fit on``, which silently lowers n_ctx and n_gpu_layers at start
(common/fit.cpp): :func:`server_arguments` pins all of them so a plan is obeyed exactly.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from core.errors import InvalidOptionsError, PlanError
from core.gguf import GgmlType, GgufHeader, GgufModel, ggml_type

SplitMode = Literal["none", "layer", "row", "tensor"]
Backend = Literal["cpu", "cuda"]

#: KV cache types llama-server accepts for -ctk/-ctv (common/arg.cpp:304-314)
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

#: llama-server defaults of b11312 (common/common.h:451-457, common/arg.cpp:1403, tools/server/server.cpp:156-160)
DEFAULT_N_BATCH = 2048
DEFAULT_N_UBATCH = 512
AUTO_N_PARALLEL = 4  # "-np auto" becomes 4 slots with --kv-unified

#: n_ctx is rounded up to a multiple of this; so is each stream's share without a unified cache
#: (src/llama-context.cpp:283-300); the SWA cache is padded the same way (src/llama-kv-cache-iswa.cpp:70)
CTX_PAD = 256

#: architectures whose memory is a recurrent state (alone or beside attention layers) or a special cache
#: (src/llama-arch.cpp:1071-1110 llm_arch_is_recurrent / llm_arch_is_hybrid; src/llama-model.cpp:2352-2660)
_RECURRENT_OR_SPECIAL = frozenset(
    {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "jamba", "falcon-h1", "plamo2", "granitehybrid",
     "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe", "qwen3next", "kimi-linear", "bailingmoe3", "kimi-k3",
     "glm5-next", "qwen35", "qwen35moe", "qwen4exp", "deepseek4", "minimax-01", "minimax-m3", "glm-dsa",
     "deepseek32", "hy_v4", "dots3note", "dflash", "gemma4-assistant", "eagle3"}
)
#: encoder-only, diffusion and vocoder models get no KV cache at all (src/llama-model.cpp:2357-2374)
_NO_MEMORY = frozenset(
    {"bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe", "neo-bert", "eurobert",
     "wavtokenizer-dec", "modern-bert", "gemma-embedding", "dream", "llada", "llada-moe", "rnd1"}
)

_HOST = -1  # device index of host memory in placements


# SETTINGS


@dataclass(frozen=True)
class LlamaCppSettings:
    """What a plan fixes for llama-server; :func:`server_arguments` turns it into flags."""

    n_ctx: int  # total cells (-c), all slots together
    n_parallel: int = 1  # -np slots
    kv_unified: bool = False  # one cache shared by all slots (-kvu) or one stream per slot
    n_batch: int = DEFAULT_N_BATCH
    n_ubatch: int = DEFAULT_N_UBATCH
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: bool = True
    n_gpu_layers: int = 0  # 0 = CPU only; n_layer + 1 = everything, output head included
    split_mode: SplitMode = "layer"
    tensor_split: tuple[float, ...] = ()  # proportions per GPU; empty = llama.cpp's default (free memory)
    swa_full: bool = False
    use_mmap: bool = True


@dataclass(frozen=True)
class ContextShape:
    """The context llama.cpp really builds from -c/-np/-kvu/-b/-ub (src/llama-context.cpp:240-300)."""

    n_ctx: int  # padded to CTX_PAD, and a multiple of n_seq without a unified cache
    n_ctx_seq: int  # cells one slot can use
    n_seq: int
    n_stream: int  # KV streams: 1 with a unified cache, else one per slot
    n_batch: int
    n_ubatch: int
    n_outputs: int  # logits rows per ubatch: one per slot on llama-server (tools/server/server-context.cpp:41-52)

    @property
    def kv_size(self) -> int:
        """Cells per stream of the (non-SWA) cache: n_ctx_seq (src/llama-model.cpp:2860-2875)."""
        return self.n_ctx_seq


def _pad(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def context_shape(
    *, n_ctx: int, n_parallel: int = 1, kv_unified: bool = False, n_batch: int = DEFAULT_N_BATCH,
    n_ubatch: int = DEFAULT_N_UBATCH,
) -> ContextShape:
    if n_ctx <= 0 or n_parallel <= 0 or n_batch <= 0 or n_ubatch <= 0:
        raise InvalidOptionsError(
            f"llama.cpp needs positive sizes, not n_ctx={n_ctx}, n_parallel={n_parallel}, "
            f"n_batch={n_batch}, n_ubatch={n_ubatch}.",
            hint="Pass an explicit context size (-c 0 means the trained context and is not planned here).",
        )
    ctx = _pad(n_ctx, CTX_PAD)
    if kv_unified:
        ctx_seq = ctx
    else:
        ctx_seq = _pad(ctx // n_parallel, CTX_PAD)
        ctx = ctx_seq * n_parallel
    batch = min(ctx, n_batch)  # causal attention: the batch is capped by the context (llama-context.cpp:222)
    ubatch = min(batch, n_ubatch)
    return ContextShape(
        n_ctx=ctx,
        n_ctx_seq=ctx_seq,
        n_seq=n_parallel,
        n_stream=1 if kv_unified else n_parallel,
        n_batch=batch,
        n_ubatch=ubatch,
        n_outputs=min(batch, n_parallel),
    )


def cache_type(name: str) -> GgmlType:
    if name.lower() not in CACHE_TYPES:
        raise InvalidOptionsError(
            f"'{name}' is not a KV cache type llama-server accepts.", hint="Use one of: " + ", ".join(CACHE_TYPES) + "."
        )
    return ggml_type(name)


# MODEL CHECKS


def _require_sizable(model: GgufModel) -> None:
    if model.architecture in _RECURRENT_OR_SPECIAL:
        raise PlanError(
            f"EZ Runner cannot size the memory of a '{model.architecture}' model for llama.cpp yet: it keeps a "
            "recurrent state or a sparse-attention index beside (or instead of) a KV cache.",
            hint="Pick the safetensors variant with vLLM, or give the llama.cpp options by hand.",
        )
    missing = [
        field
        for field, value in (
            ("block_count", model.block_count),
            ("embedding_length", model.embedding_length),
            ("head_count", model.head_count),
            ("vocab size (tokenizer.ggml.tokens)", model.vocab_size),
        )
        if not value
    ]
    if missing:
        raise PlanError(
            f"The GGUF metadata lacks {', '.join(missing)}, which llama.cpp needs to build the model.",
            hint="Use another conversion of the model.",
        )


# KV CACHE


@dataclass(frozen=True)
class KvCache:
    """K and V bytes per layer (0 for layers without their own cache) and what llama.cpp logs about them."""

    layer_bytes: tuple[int, ...]
    k_bytes: int
    v_bytes: int
    cells: int  # per stream, non-SWA layers
    swa_cells: int | None  # per stream, SWA layers (None without SWA)
    n_stream: int

    @property
    def total(self) -> int:
        return self.k_bytes + self.v_bytes

    def on_devices(self, layer_devices: Sequence[int], n_devices: int) -> tuple[tuple[int, ...], int]:
        """(bytes per GPU, host bytes) when layer ``i`` lives on ``layer_devices[i]`` (-1 = host)."""
        gpus = [0] * n_devices
        host = 0
        for layer, size in enumerate(self.layer_bytes):
            device = layer_devices[layer] if layer < len(layer_devices) else _HOST
            if device == _HOST:
                host += size
            else:
                gpus[device] += size
        return tuple(gpus), host


def swa_cells(*, model: GgufModel, shape: ContextShape, swa_full: bool = False) -> int | None:
    """Cells per stream of the sliding-window cache (src/llama-kv-cache-iswa.cpp:70-80), None without SWA."""
    if not model.sliding_window or not model.swa_layers:
        return None
    if swa_full:
        return shape.kv_size
    per_stream = model.sliding_window * (shape.n_seq if shape.n_stream == 1 else 1) + shape.n_ubatch
    return _pad(min(shape.kv_size, per_stream), CTX_PAD)


def kv_cache_bytes(
    *,
    model: GgufModel,
    n_ctx: int,
    n_parallel: int = 1,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    kv_unified: bool = False,
    n_ubatch: int = DEFAULT_N_UBATCH,
    n_batch: int = DEFAULT_N_BATCH,
    flash_attn: bool = True,
    swa_full: bool = False,
) -> KvCache:
    """The KV cache llama.cpp allocates, per layer (src/llama-kv-cache.cpp:164-240, llama-hparams.cpp:150-200)."""
    _require_sizable(model)
    if model.architecture in _NO_MEMORY:
        n = model.block_count or 0
        return KvCache(layer_bytes=(0,) * n, k_bytes=0, v_bytes=0, cells=0, swa_cells=None, n_stream=1)
    if not flash_attn and cache_type(cache_type_v).block_size > 1:
        raise InvalidOptionsError(
            f"llama.cpp refuses a quantized V cache ({cache_type_v}) without flash attention "
            "(src/llama-context.cpp:474-478).",
            hint="Turn flash attention on (-fa on) or keep -ctv f16.",
        )
    shape = context_shape(n_ctx=n_ctx, n_parallel=n_parallel, kv_unified=kv_unified, n_batch=n_batch, n_ubatch=n_ubatch)
    k_type, v_type = cache_type(cache_type_k), cache_type(cache_type_v)
    if model.is_mla and k_type != v_type:
        raise InvalidOptionsError(
            f"llama.cpp refuses different K ({cache_type_k}) and V ({cache_type_v}) cache types for a latent-attention "
            "model (src/llama-context.cpp:3835-3838).",
            hint="Give -ctk and -ctv the same type.",
        )
    n_layer_all = model.block_count or 0
    swa = swa_cells(model=model, shape=shape, swa_full=swa_full)
    # without flash attention V is stored transposed and every layer is padded to the widest
    # (src/llama-kv-cache.cpp:213-215, [TAG_V_CACHE_VARIABLE])
    v_max = max((model.value_length_at(il) * model.head_count_kv_at(il) for il in range(n_layer_all)), default=0)
    layers: list[int] = []
    k_total = v_total = 0
    for il in range(n_layer_all):
        if not model.has_kv(il):
            layers.append(0)
            continue
        cells = swa if (swa is not None and model.is_swa_layer(il)) else shape.kv_size
        k_width = model.key_length_at(il) * model.head_count_kv_at(il)
        v_width = 0 if model.is_mla else (model.value_length_at(il) * model.head_count_kv_at(il) if flash_attn
                                          else v_max)
        # a quantized cache's blocks may not straddle heads (src/llama-context.cpp:3851-3870)
        for head, kind, which in ((model.key_length_at(il), k_type, "K"), (model.value_length_at(il), v_type, "V")):
            if head % kind.block_size and not (which == "V" and model.is_mla):
                raise InvalidOptionsError(
                    f"A {kind.name} {which} cache needs heads that are multiples of {kind.block_size} values; "
                    f"layer {il} of this model has heads of {head}.",
                    hint=f"Use an f16 or bf16 {which} cache for this model.",
                )
        k = kind_bytes(k_type, k_width) * cells * shape.n_stream
        v = kind_bytes(v_type, v_width) * cells * shape.n_stream
        k_total += k
        v_total += v
        layers.append(k + v)
    return KvCache(
        layer_bytes=tuple(layers), k_bytes=k_total, v_bytes=v_total, cells=shape.kv_size, swa_cells=swa,
        n_stream=shape.n_stream,
    )


def kind_bytes(kind: GgmlType, n_values: int) -> int:
    return kind.row_bytes(n_values)


# WEIGHTS


@dataclass(frozen=True)
class WeightsPlacement:
    gpu_bytes: tuple[int, ...]  # per GPU, in the order of gpu_shares
    host_bytes: int
    layer_devices: tuple[int, ...]  # device of each repeating layer, -1 = host
    output_device: int  # device of the output layer (-1 = host)

    @property
    def total(self) -> int:
        return sum(self.gpu_bytes) + self.host_bytes


_INPUT_TENSORS = ("token_embd.", "position_embd.", "token_types.", "per_layer_token_embd.")
# repeating-layer tensors without a block number: loaded with layer 0 (rope factors are referenced by
# every layer and duplicated onto each device that holds layers, src/models/llama.cpp:60-66)
_LAYER0_TENSORS = ("token_embd_norm.",)
_PER_DEVICE_TENSORS = ("rope_freqs.", "rope_factors_long.", "rope_factors_short.")


def layer_devices(
    *, n_layer_all: int, n_gpu_layers: int, gpu_shares: Sequence[float]
) -> tuple[tuple[int, ...], int]:
    """(device per repeating layer, device of the output layer); -1 is host (src/llama-model.cpp:1557-1614)."""
    n_gpus = len(gpu_shares)
    ngl = n_layer_all + 1 if n_gpu_layers < 0 else n_gpu_layers
    start = max(n_layer_all + 1 - ngl, 0)
    active = min(ngl, n_layer_all + 1) if n_gpus else 0
    splits = _cumulative_splits(gpu_shares)

    def device(il: int) -> int:
        if il < start or il - start >= active:
            return _HOST
        position = _f32(_f32(il - start) / active)
        return min(bisect.bisect_right(splits, position), n_gpus - 1)

    return tuple(device(il) for il in range(n_layer_all)), device(n_layer_all)


def _f32(value: float) -> float:
    """Round to float32, as llama.cpp computes the split points in float."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _cumulative_splits(shares: Sequence[float]) -> list[float]:
    if not shares:
        return []
    if any(s < 0 for s in shares) or not any(shares):
        raise InvalidOptionsError(
            f"GPU shares {tuple(shares)} must be non-negative and not all zero.", hint="Pass proportions like 3,1."
        )
    total = 0.0
    cumulative = []
    for share in shares:
        total = _f32(total + _f32(share))
        cumulative.append(total)
    return [_f32(c / total) for c in cumulative]


def weights_placement(
    *,
    header: GgufHeader,
    n_gpu_layers: int,
    gpu_shares: Sequence[float],
    split_mode: SplitMode = "layer",
) -> WeightsPlacement:
    """Bytes of weights per GPU and in host memory for ``-ngl n_gpu_layers -ts gpu_shares -sm split_mode``.

    ``gpu_shares`` has one proportion per GPU (what ``--tensor-split`` takes); pass llama.cpp's default yourself
    (it splits by free memory). ``split_mode`` "none" uses only the first GPU. "row" and "tensor" split each
    offloaded matrix across all GPUs by the shares (an approximation: CUDA rounds row splits to 512 rows).
    """
    model = header.model
    n_layer_all = model.block_count or 0
    shares = tuple(gpu_shares)
    if split_mode == "none":
        shares = shares[:1]
    devices, output_device = layer_devices(n_layer_all=n_layer_all, n_gpu_layers=n_gpu_layers, gpu_shares=shares)
    gpus = [0] * len(shares)
    host = 0
    used_devices = set(devices)
    share_total = sum(shares) or 1.0

    def put(device: int, nbytes: int, *, matrix: bool) -> None:
        nonlocal host
        if device == _HOST:
            host += nbytes
        elif matrix and split_mode in ("row", "tensor") and len(shares) > 1:
            for index, share in enumerate(shares):
                gpus[index] += round(nbytes * share / share_total)
        else:
            gpus[device] += nbytes

    names = {t.name for t in header.tensors}
    for tensor in header.tensors:
        matrix = len([d for d in tensor.shape if d > 1]) >= 2
        layer = tensor.layer
        if layer is not None and layer < n_layer_all:
            put(devices[layer], tensor.nbytes, matrix=matrix)
        elif tensor.name.startswith(_INPUT_TENSORS):
            put(_HOST, tensor.nbytes, matrix=matrix)
        elif tensor.name.startswith(_LAYER0_TENSORS):
            put(devices[0] if devices else _HOST, tensor.nbytes, matrix=matrix)
        elif tensor.name.startswith(_PER_DEVICE_TENSORS):
            for device in used_devices or {_HOST}:
                put(device, tensor.nbytes, matrix=False)
        else:
            put(output_device, tensor.nbytes, matrix=matrix)
    # a tied output head is token_embd loaded a second time for the output layer's buffer; on the host it is the
    # same tensor (src/llama-model-loader.cpp:1371-1376), on a GPU it is a copy (src/models/llama.cpp:45)
    if "output.weight" not in names and output_device != _HOST:
        embedding = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
        if embedding is not None:
            put(output_device, embedding.nbytes, matrix=True)
    return WeightsPlacement(
        gpu_bytes=tuple(gpus), host_bytes=host, layer_devices=devices, output_device=output_device
    )


# OUTPUT BUFFER


def output_buffer_bytes(*, model: GgufModel, n_parallel: int, n_outputs: int | None = None) -> int:
    """Host buffer for the logits of ``max(n_outputs, n_parallel)`` rows (src/llama-context.cpp:2116-2160).

    llama-server asks for one output per slot (without speculative decoding), which is what it starts with.
    """
    rows = max(n_outputs or n_parallel, n_parallel)
    return (model.vocab_size or 0) * rows * 4


# COMPUTE BUFFER: the graph allocator of ggml/src/ggml-alloc.c, run over a rebuilt graph


@dataclass
class _Node:
    nbytes: int
    srcs: list[int]
    inplace: bool = False  # ggml_op_can_inplace (ggml-alloc.c:22-51) and same layout as its first candidate
    view_of: int | None = None  # ultimate view source (views are never allocated)
    external: bool = False  # lives in a buffer of its own (a view into the KV cache)
    is_input: bool = False
    is_output: bool = False


class _FreeList:
    """ggml_dyn_tallocr (ggml-alloc.c:180-330): best-fit free blocks, the last block grows the buffer."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]
        self.max_size = 0

    def _aligned(self, size: int) -> int:
        return _pad(size, self.alignment)

    def alloc(self, size: int) -> int:
        size = self._aligned(size)
        best = -1
        best_size = 0
        for index, (_offset, free) in enumerate(self.blocks[:-1]):
            if free >= size and (best < 0 or free <= best_size):
                best, best_size = index, free
        if best < 0:
            best = len(self.blocks) - 1
        offset = self.blocks[best][0]
        self.blocks[best][0] += size
        self.blocks[best][1] -= size
        if self.blocks[best][1] == 0:
            del self.blocks[best]
        self.max_size = max(self.max_size, offset + size)
        return offset

    def free(self, offset: int, size: int) -> None:
        size = self._aligned(size)
        for index, block in enumerate(self.blocks):
            if block[0] + block[1] == offset:
                block[1] += size
                if index + 1 < len(self.blocks) and block[0] + block[1] == self.blocks[index + 1][0]:
                    block[1] += self.blocks[index + 1][1]
                    del self.blocks[index + 1]
                return
            if offset + size == block[0]:
                block[0] = offset
                block[1] += size
                if index > 0 and self.blocks[index - 1][0] + self.blocks[index - 1][1] == block[0]:
                    self.blocks[index - 1][1] += block[1]
                    del self.blocks[index]
                return
        position = 0
        while position < len(self.blocks) and self.blocks[position][0] < offset:
            position += 1
        self.blocks.insert(position, [offset, size])


def _allocate(nodes: Sequence[_Node], *, alignment: int) -> int:
    """The buffer size ggml_gallocr_alloc_graph_impl (ggml-alloc.c:718-820) ends with for this graph."""
    heap = _FreeList(alignment)
    children = [0] * len(nodes)
    views = [0] * len(nodes)
    own = [False] * len(nodes)
    address = [0] * len(nodes)
    for node in nodes:
        if node.view_of is not None:
            views[node.view_of] += 1
        for src in node.srcs:
            children[src] += 1

    def allocate(index: int) -> None:
        node = nodes[index]
        if own[index] or node.view_of is not None or node.external:
            return
        if node.inplace:
            for parent in node.srcs:
                candidate = nodes[parent]
                # views and external tensors are not the allocator's own (ggml-alloc.c:637-641)
                if candidate.view_of is not None or candidate.external or candidate.is_output or not own[parent]:
                    continue
                if candidate.nbytes != node.nbytes:  # ggml_are_same_layout (ggml-alloc.c:648-651)
                    continue
                if children[parent] == 1 and views[parent] == 0:
                    address[index] = address[parent]
                    own[parent] = False
                    own[index] = True
                    return
        address[index] = heap.alloc(node.nbytes)
        own[index] = True

    def release(index: int) -> None:
        if own[index] and not nodes[index].is_output:
            heap.free(address[index], nodes[index].nbytes)
            own[index] = False

    for index, node in enumerate(nodes):
        if node.is_input:
            allocate(index)
    for index, node in enumerate(nodes):
        if node.is_input:
            continue
        allocate(index)
        for parent in node.srcs:
            children[parent] -= 1
            if children[parent] or views[parent]:
                continue
            source = nodes[parent].view_of
            if source is not None:
                views[source] -= 1
                if views[source] == 0 and children[source] == 0:
                    release(source)
            else:
                release(parent)
    return heap.max_size


@dataclass(frozen=True)
class _Layer:
    n_head: int
    n_head_kv: int
    head_k: int
    head_v: int
    n_ff: int
    n_kv: int  # cells the layer attends to (per stream)
    swa: bool


@dataclass(frozen=True)
class _GraphSpec:
    """The shape facts of one decoder graph; every tensor is float32 unless said otherwise."""

    n_embd: int
    n_vocab: int
    layers: tuple[_Layer, ...]
    n_tokens: int
    n_stream: int
    n_outputs: int
    flash_attn: bool
    iswa: bool  # iSWA caches build q, k, v in that order and have two sets of inputs (llama-graph.cpp:3146-3160)
    fused_qkv: bool
    qk_norm: bool
    gated_ffn: bool
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    norm_expert_weights: bool
    shared_expert_ff: int
    rot_k: int  # Hadamard rotation sizes for quantized caches (llama-kv-cache.cpp:316-338, 1447-1486)
    rot_v: int


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[_Node] = []

    def add(self, nbytes: int, srcs: Sequence[int] = (), **flags: object) -> int:
        self.nodes.append(_Node(nbytes, list(srcs), **flags))  # type: ignore[arg-type]
        return len(self.nodes) - 1

    def view(self, of: int) -> int:
        source = self.nodes[of].view_of
        return self.add(0, [of], view_of=of if source is None else source)

    def source(self, index: int) -> int:
        source = self.nodes[index].view_of
        return index if source is None else source


def _build_graph(spec: _GraphSpec) -> list[_Node]:
    """The prompt-processing graph of a llama-like decoder as llama.cpp orders it.

    Node order and in-place chances follow src/models/llama.cpp (and gemma3.cpp for the iSWA order), and
    build_qkv / build_attn / build_attn_mha / build_ffn / build_moe_ffn in src/llama-graph.cpp.
    """
    g = _Graph()
    f32 = 4
    e, t, o = spec.n_embd, spec.n_tokens, spec.n_outputs
    tokens = g.add(t * 4, is_input=True)
    g.add(e * t * f32, is_input=True)  # inp_embd: allocated for embedding inputs, never read (llama-graph.cpp:2389)
    inp_pos = g.add(t * 4, is_input=True)

    # attention inputs per cache kind, in the order their first layer uses them (leaf order)
    inputs: dict[bool, tuple[int, int, int, int | None, int | None]] = {}

    def attention_inputs(layer: _Layer) -> tuple[int, int, int, int | None, int | None]:
        key = layer.swa and spec.iswa
        if key not in inputs:
            k_idxs = g.add(t * 8, is_input=True)
            v_width = layer.n_head_kv * layer.head_v
            v_idxs = g.add(t * 8 if spec.flash_attn else t * v_width * 8, is_input=True)
            mask = g.add(layer.n_kv * t * (2 if spec.flash_attn else 4), is_input=True)
            k_rot = g.add(spec.rot_k * spec.rot_k * 4, is_input=True) if spec.rot_k else None
            v_rot = g.add(spec.rot_v * spec.rot_v * 4, is_input=True) if spec.rot_v else None
            inputs[key] = (k_idxs, v_idxs, mask, k_rot, v_rot)
        return inputs[key]

    for layer in spec.layers[:1]:
        attention_inputs(layer)
    # the other cache kind's inputs, then out_ids, are leaves met later; they are all allocated up front
    for layer in spec.layers:
        attention_inputs(layer)
    out_ids = g.add(o * 4, is_input=True)

    def rotate(x: int, nbytes: int, rot: int | None) -> int:
        if rot is None:
            return x
        flat = g.view(x)
        product = g.add(nbytes, [flat, rot])
        return g.view(product)

    current = g.add(e * t * f32, [tokens])  # get_rows(token_embd)
    for il, layer in enumerate(spec.layers):
        last = il == len(spec.layers) - 1
        k_idxs, v_idxs, mask, k_rot, v_rot = attention_inputs(layer)
        q_bytes = layer.n_head * layer.head_k * t * f32
        k_bytes = layer.n_head_kv * layer.head_k * t * f32
        v_bytes = layer.n_head_kv * layer.head_v * t * f32
        residual = current
        normed = g.add(e * t * f32, [current], inplace=True)
        normed = g.add(e * t * f32, [normed], inplace=True)  # * attn_norm weight

        def finish_qk(x: int, nbytes: int) -> int:
            x3 = g.view(x)  # reshape to [head, heads, tokens]
            if spec.qk_norm:
                x3 = g.add(nbytes, [x3], inplace=True)  # rms_norm of a view: a new tensor
                x3 = g.add(nbytes, [x3], inplace=True)  # * norm weight
            return g.add(nbytes, [x3, inp_pos], inplace=True)  # rope

        if spec.fused_qkv:
            qkv = g.add(q_bytes + k_bytes + v_bytes, [normed])
            q = g.add(q_bytes, [g.view(qkv), inp_pos], inplace=True)
            q = rotate(q, q_bytes, k_rot)
            k = g.add(k_bytes, [g.view(qkv), inp_pos], inplace=True)
            k = rotate(k, k_bytes, k_rot)
            v = rotate(g.view(qkv), v_bytes, v_rot)
        else:
            q = rotate(finish_qk(g.add(q_bytes, [normed]), q_bytes), q_bytes, k_rot)
            if spec.iswa:
                k = rotate(finish_qk(g.add(k_bytes, [normed]), k_bytes), k_bytes, k_rot)
                v = rotate(g.view(g.add(v_bytes, [normed])), v_bytes, v_rot)
            else:
                v = rotate(g.view(g.add(v_bytes, [normed])), v_bytes, v_rot)
                k = rotate(finish_qk(g.add(k_bytes, [normed]), k_bytes), k_bytes, k_rot)
        g.add(0, [g.view(k), k_idxs], external=True)  # set_rows into the K cache
        g.add(0, [g.view(v), v_idxs], external=True)  # set_rows into the V cache
        q_perm = g.view(g.view(q))
        n_kv = layer.n_kv
        attn_bytes = layer.n_head * layer.head_v * t * f32
        if spec.flash_attn:
            attn = g.view(g.add(attn_bytes, [q_perm, mask]))
        else:
            scores = g.add(n_kv * t * layer.n_head * f32, [q_perm])
            scores = g.add(n_kv * t * layer.n_head * f32, [scores, mask], inplace=True)  # soft_max
            attn = g.add(attn_bytes, [g.view(g.add(attn_bytes, [scores]))])  # kqv, then cont of its permute
        attn = rotate(attn, attn_bytes, v_rot)
        out = g.add(e * t * f32, [attn])  # wo
        rows = t
        if last:
            out = g.add(e * o * f32, [out, out_ids])
            residual = g.add(e * o * f32, [residual, out_ids])
            rows = o
        ffn_in = g.add(e * rows * f32, [out, residual], inplace=True)
        normed = g.add(e * rows * f32, [ffn_in], inplace=True)
        normed = g.add(e * rows * f32, [normed], inplace=True)
        if spec.n_expert:
            ffn_out = _moe(g, spec, normed, rows)
        else:
            ffn_out = _dense_ffn(g, normed, e, layer.n_ff, rows, gated=spec.gated_ffn)
        current = g.add(e * rows * f32, [ffn_out, ffn_in], inplace=True)
    normed = g.add(e * o * f32, [current], inplace=True)
    normed = g.add(e * o * f32, [normed], inplace=True, is_output=True)  # result_norm (t_embd)
    g.add(spec.n_vocab * o * f32, [normed], is_output=True)  # result_output (logits)
    return g.nodes


def _dense_ffn(g: _Graph, x: int, n_embd: int, n_ff: int, rows: int, *, gated: bool) -> int:
    f32 = 4
    if gated:
        # the graph lists the gate before up: the GLU's first source is visited first (ggml.c ggml_visit_parents)
        gate = g.add(n_ff * rows * f32, [x])
        up = g.add(n_ff * rows * f32, [x])
        act = g.add(n_ff * rows * f32, [gate, up])  # swiglu/geglu_split: not in place
    else:
        act = g.add(n_ff * rows * f32, [g.add(n_ff * rows * f32, [x])], inplace=True)
    return g.add(n_embd * rows * f32, [act])


def _moe(g: _Graph, spec: _GraphSpec, x: int, rows: int) -> int:
    """build_moe_ffn (src/llama-graph.cpp:2007-2370) with softmax gating, then an optional shared expert."""
    f32 = 4
    e, n_exp, k, ff = spec.n_embd, spec.n_expert, spec.n_expert_used, spec.n_ff_exp
    logits = g.add(n_exp * rows * f32, [x])
    probs = g.add(n_exp * rows * f32, [logits], inplace=True)  # soft_max
    order = g.add(n_exp * rows * 4, [probs])  # argsort (i32), top-k is a view of it
    selected = g.view(order)
    weights = g.add(k * rows * f32, [g.view(probs), selected])  # get_rows
    if spec.norm_expert_weights:
        flat = g.view(weights)
        total = g.add(rows * f32, [flat])  # sum_rows
        total = g.add(rows * f32, [total], inplace=True)  # clamp
        weights = g.view(g.add(k * rows * f32, [flat, total], inplace=True))  # div (src0 is a view: new)
    x3 = g.view(x)
    gate = g.add(ff * k * rows * f32, [x3, selected])
    up = g.add(ff * k * rows * f32, [x3, selected])
    act = g.add(ff * k * rows * f32, [gate, up])
    experts = g.add(e * k * rows * f32, [act, selected])
    experts = g.add(e * k * rows * f32, [experts, weights], inplace=True)
    parts = [g.view(experts) for _ in range(k)]
    out = parts[0]
    for part in parts[1:]:
        out = g.add(e * rows * f32, [out, part], inplace=True)
    if k == 1:
        out = g.add(e * rows * f32, [out])
    if spec.shared_expert_ff:
        shared = _dense_ffn(g, x, e, spec.shared_expert_ff, rows, gated=True)
        out = g.add(e * rows * f32, [out, shared], inplace=True)
    return out


#: graph families whose node order this module reproduces and that were checked against llama-server logs
#: (tests/unit/fixtures/llamacpp_logs); others use the same graph, built from their tensors, unchecked
VERIFIED_GRAPHS = frozenset({"llama", "gemma3"})
#: per-backend buffer alignment (ggml/src/ggml-impl.h:44 TENSOR_ALIGNMENT; ggml-cuda.cu:897-899)
_ALIGNMENT: Mapping[str, int] = MappingProxyType({"cpu": 32, "cuda": 128})


@dataclass(frozen=True)
class Calibration:
    """How a backend's logged compute buffer relates to the rebuilt graph's allocation."""

    scale: float
    extra_bytes: int
    source: str


#: cpu: the rebuilt graph gives the logged size to the byte for the verified families (llama-server b11312,
#: tests/unit/fixtures/llamacpp_logs/*.log). cuda: the same graph at CUDA's alignment is 2.7-3.4 % above the CUDA0
#: compute buffer llama-server logged on an H200 (CUDA backends fuse some nodes the CPU graph keeps), an upper
#: bound kept as is (tests/unit/fixtures/gpu_measurements/llamacpp-h200.json).
COMPUTE_CALIBRATION: Mapping[str, Calibration] = MappingProxyType(
    {
        "cpu": Calibration(1.0, 0, "exact against llama-server b11312 CPU logs"),
        "cuda": Calibration(1.0, 0, "upper bound: 2.7-3.4 % above llama-server b11312's CUDA0 log on an H200"),
    }
)


def _graph_spec(*, header: GgufHeader, shape: ContextShape, flash_attn: bool, cache_type_k: str,
                cache_type_v: str, swa_full: bool, n_tokens: int) -> _GraphSpec:
    model = header.model
    names = {t.name for t in header.tensors}
    swa = swa_cells(model=model, shape=shape, swa_full=swa_full)
    layers = tuple(
        _Layer(
            n_head=model.head_count_at(il),
            n_head_kv=model.head_count_kv_at(il),
            head_k=model.key_length_at(il),
            head_v=model.value_length_at(il),
            n_ff=model.feed_forward_length_at(il),
            n_kv=(swa if (swa is not None and model.is_swa_layer(il)) else shape.kv_size),
            swa=model.is_swa_layer(il),
        )
        for il in range(model.n_layer)
    )
    k_type, v_type = cache_type(cache_type_k), cache_type(cache_type_v)
    head_ks = {layer.head_k for layer in layers}
    head_vs = {layer.head_v for layer in layers}
    rot_k = rot_v = 0
    # attention rotation for quantized caches with one head size that is a multiple of 64
    # (src/llama-kv-cache.cpp:316-338); K uses the largest power of two dividing it (1447-1466), V 64 (1468-1486)
    if k_type.block_size > 1 and len(head_ks) == 1 and next(iter(head_ks)) % 64 == 0:
        head = next(iter(head_ks))
        rot_k = 64
        while head % (rot_k * 2) == 0:
            rot_k *= 2
    if v_type.block_size > 1 and len(head_vs) == 1 and next(iter(head_vs)) % 64 == 0:
        rot_v = 64
    used = model.expert_used_count
    n_used = max(used) if isinstance(used, tuple) else used
    shared_ff = 0
    shared = next((t for t in header.tensors if t.name == "blk.0.ffn_up_shexp.weight"), None)
    if shared is not None and len(shared.shape) >= 2:
        shared_ff = shared.shape[1]
    n_ff_exp = 0
    experts = next((t for t in header.tensors if t.name == "blk.0.ffn_up_exps.weight"), None)
    if experts is not None and len(experts.shape) >= 2:
        n_ff_exp = experts.shape[1]
    return _GraphSpec(
        n_embd=model.embedding_length or 0,
        n_vocab=model.vocab_size or 0,
        layers=layers,
        n_tokens=n_tokens,
        n_stream=shape.n_stream,
        n_outputs=min(n_tokens, shape.n_outputs),
        flash_attn=flash_attn,
        iswa=swa is not None,
        fused_qkv="blk.0.attn_qkv.weight" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        gated_ffn="blk.0.ffn_gate.weight" in names or model.expert_count > 0,
        n_expert=model.expert_count if "blk.0.ffn_gate_inp.weight" in names else 0,
        n_expert_used=n_used,
        n_ff_exp=n_ff_exp,
        norm_expert_weights=bool(header.metadata.get(f"{model.architecture}.expert_weights_norm", True)),
        shared_expert_ff=shared_ff,
        rot_k=rot_k,
        rot_v=rot_v,
    )


def compute_buffer_bytes(
    *,
    header: GgufHeader,
    n_ctx: int,
    n_parallel: int = 1,
    kv_unified: bool = False,
    n_ubatch: int = DEFAULT_N_UBATCH,
    n_batch: int = DEFAULT_N_BATCH,
    flash_attn: bool = True,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    swa_full: bool = False,
    backend: Backend = "cpu",
) -> int:
    """The compute buffer llama.cpp reserves when the whole graph runs on one backend.

    llama.cpp reserves the prompt graph (``min(n_ctx, n_ubatch)`` tokens, one output per slot), the
    one-token-per-slot graph, and the prompt graph again, and keeps the largest (src/llama-context.cpp:
    625-730); the prompt graph is the largest. Without flash attention the attention scores
    (``n_kv × n_ubatch × n_head`` floats) dominate; with it the FFN activations do.
    """
    model = header.model
    _require_sizable(model)
    shape = context_shape(n_ctx=n_ctx, n_parallel=n_parallel, kv_unified=kv_unified, n_batch=n_batch, n_ubatch=n_ubatch)
    calibration = COMPUTE_CALIBRATION[backend]
    sizes = []
    # graph_reserve rounds the token count up to a multiple of n_seq_max (src/llama-context.cpp:2528-2531)
    for tokens in (shape.n_ubatch, shape.n_seq):
        n_tokens = -(-tokens // shape.n_seq) * shape.n_seq
        spec = _graph_spec(header=header, shape=shape, flash_attn=flash_attn, cache_type_k=cache_type_k,
                           cache_type_v=cache_type_v, swa_full=swa_full, n_tokens=n_tokens)
        sizes.append(_allocate(_build_graph(spec), alignment=_ALIGNMENT[backend]))
    return int(max(sizes) * calibration.scale) + calibration.extra_bytes


# WHOLE ESTIMATE AND FITTING


@dataclass(frozen=True)
class DeviceMemory:
    weights: int
    kv_cache: int
    compute: int
    output: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.output


@dataclass(frozen=True)
class MemoryEstimate:
    gpus: tuple[DeviceMemory, ...]
    host: DeviceMemory
    shape: ContextShape
    graph_verified: bool  # whether the compute-buffer graph of this architecture was checked against logs


def memory_estimate(*, header: GgufHeader, settings: LlamaCppSettings, gpu_shares: Sequence[float] = (),
                    backend: Backend = "cuda") -> MemoryEstimate:
    """Everything llama-server allocates for ``settings``: per GPU and in host memory.

    Every GPU that holds layers (or the output head) is given the whole single-backend compute buffer: each runs
    its part of the graph in its own buffer, whose peak is at most the whole graph's (an upper bound until a GPU
    calibration says more; pipeline parallelism across GPUs keeps extra copies of the graph inputs). With layers
    left on the host the host gets a CPU compute buffer too, else only the part the CPU runs. Host memory does
    not include the server's prompt cache (``--cache-ram``) or context checkpoints of sliding-window models
    (``--ctx-checkpoints``); :func:`server_arguments` bounds them.
    """
    model = header.model
    shape = context_shape(n_ctx=settings.n_ctx, n_parallel=settings.n_parallel, kv_unified=settings.kv_unified,
                          n_batch=settings.n_batch, n_ubatch=settings.n_ubatch)
    shares = tuple(gpu_shares)[:1] if settings.split_mode == "none" else tuple(gpu_shares)
    if settings.split_mode == "tensor" and not settings.flash_attn:
        raise InvalidOptionsError(
            "llama.cpp's tensor split mode needs flash attention (src/llama-context.cpp:3826-3829).",
            hint="Use -fa on with -sm tensor, or the layer split mode.",
        )
    placement = weights_placement(header=header, n_gpu_layers=settings.n_gpu_layers if shares else 0,
                                  gpu_shares=shares, split_mode=settings.split_mode)
    kv = kv_cache_bytes(model=model, n_ctx=settings.n_ctx, n_parallel=settings.n_parallel,
                        cache_type_k=settings.cache_type_k, cache_type_v=settings.cache_type_v,
                        kv_unified=settings.kv_unified, n_ubatch=settings.n_ubatch, n_batch=settings.n_batch,
                        flash_attn=settings.flash_attn, swa_full=settings.swa_full)
    kv_gpus, kv_host = kv.on_devices(placement.layer_devices, len(shares))
    host_layers = sum(1 for d in placement.layer_devices if d == _HOST)
    offloaded = bool(shares) and settings.n_gpu_layers != 0
    gpu_compute = _compute_for(header, settings, backend) if offloaded else 0
    host_compute = (
        _compute_for(header, settings, "cpu") if host_layers or not offloaded else _host_side_compute(model=model,
                                                                                                     shape=shape)
    )
    used_gpus = {d for d in (*placement.layer_devices, placement.output_device) if d != _HOST}
    gpus = tuple(
        DeviceMemory(
            weights=placement.gpu_bytes[i],
            kv_cache=kv_gpus[i],
            compute=gpu_compute if i in used_gpus else 0,
        )
        for i in range(len(shares))
    )
    host = DeviceMemory(
        weights=placement.host_bytes,
        kv_cache=kv_host,
        compute=host_compute,
        output=output_buffer_bytes(model=model, n_parallel=settings.n_parallel),
    )
    return MemoryEstimate(gpus=gpus, host=host, shape=shape, graph_verified=model.architecture in VERIFIED_GRAPHS)


def _compute_for(header: GgufHeader, settings: LlamaCppSettings, backend: Backend) -> int:
    return compute_buffer_bytes(
        header=header, n_ctx=settings.n_ctx, n_parallel=settings.n_parallel, kv_unified=settings.kv_unified,
        n_ubatch=settings.n_ubatch, n_batch=settings.n_batch, flash_attn=settings.flash_attn,
        cache_type_k=settings.cache_type_k, cache_type_v=settings.cache_type_v, swa_full=settings.swa_full,
        backend=backend,
    )


def _host_side_compute(*, model: GgufModel, shape: ContextShape) -> int:
    """The CPU's share of the graph when every layer is offloaded: token_embd stays in host memory, so the
    get_rows that gathers the embeddings runs there, next to its inputs (inp_tokens, and inp_embd, which is
    allocated though unused; llama-graph.cpp:2384-2401). From the graph, not yet checked against a GPU log."""
    tokens = -(-shape.n_ubatch // shape.n_seq) * shape.n_seq
    rows = 2 * (model.embedding_length or 0) * tokens * 4  # inp_embd and the gathered embeddings
    return _pad(tokens * 4, _ALIGNMENT["cpu"]) + _pad(rows // 2, _ALIGNMENT["cpu"]) * 2


def max_context_that_fits(
    *,
    header: GgufHeader,
    settings: LlamaCppSettings,
    gpu_free_bytes: Sequence[int],
    host_free_bytes: int,
    gpu_shares: Sequence[float] | None = None,
    backend: Backend = "cuda",
    limit: int | None = None,
) -> int | None:
    """The largest n_ctx (a multiple of 256, at most ``limit`` or the trained context × slots) that fits, or None.

    ``gpu_free_bytes`` is what each GPU may use (after whatever margin the planner keeps); ``gpu_shares``
    defaults to those amounts, which is also llama.cpp's default split.
    """
    model = header.model
    shares = tuple(gpu_shares) if gpu_shares is not None else tuple(float(b) for b in gpu_free_bytes)
    ceiling = limit or (model.context_length or 4096) * settings.n_parallel
    step = CTX_PAD * (1 if settings.kv_unified else settings.n_parallel)

    def fits(n_ctx: int) -> bool:
        estimate = memory_estimate(
            header=header, settings=_replace(settings, n_ctx=n_ctx), gpu_shares=shares, backend=backend
        )
        if any(gpu.total > free for gpu, free in zip(estimate.gpus, gpu_free_bytes, strict=False)):
            return False
        return estimate.host.total <= host_free_bytes

    low, high = 0, ceiling // step
    if high == 0 or not fits(step):
        return None
    low = 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle * step):
            low = middle
        else:
            high = middle - 1
    return low * step


def max_gpu_layers_that_fit(
    *,
    header: GgufHeader,
    settings: LlamaCppSettings,
    gpu_free_bytes: Sequence[int],
    host_free_bytes: int,
    gpu_shares: Sequence[float] | None = None,
    backend: Backend = "cuda",
) -> int | None:
    """The largest -ngl (n_layer + 1 = all) for which ``settings.n_ctx`` fits, or None if not even 0 does."""
    model = header.model
    shares = tuple(gpu_shares) if gpu_shares is not None else tuple(float(b) for b in gpu_free_bytes)
    n_all = (model.block_count or 0) + 1
    best: int | None = None
    for ngl in range(n_all, -1, -1):
        estimate = memory_estimate(
            header=header, settings=_replace(settings, n_gpu_layers=ngl), gpu_shares=shares, backend=backend
        )
        gpus_ok = all(gpu.total <= free for gpu, free in zip(estimate.gpus, gpu_free_bytes, strict=False))
        if gpus_ok and estimate.host.total <= host_free_bytes:
            best = ngl
            break
    return best


def _replace(settings: LlamaCppSettings, **changes: object) -> LlamaCppSettings:
    from dataclasses import replace

    return replace(settings, **changes)  # type: ignore[arg-type]


# FLAGS


def server_arguments(
    settings: LlamaCppSettings, *, cache_ram_mib: int = 0, ctx_checkpoints: int = 0
) -> tuple[str, ...]:
    """llama-server flags that make it use exactly ``settings``; no default of b11312 is left to chance.

    ``--fit off``: with fit on, llama.cpp lowers n_ctx (only when -c is 0) and n_gpu_layers (only when -ngl is
    left at "auto") to the free memory it measures at start, and aborts the fit when either was set
    (common/fit.cpp:455-485); off makes the plan the only authority. ``-ngl`` is explicit because its default
    "auto" is -1, which loads every layer (src/llama-model.cpp:2002-2005). ``-np`` is explicit because its
    default "auto" means 4 slots with a unified cache. ``--cache-ram`` (default 8192 MiB of host RAM for saved
    prompts, common/common.h:634) and ``--ctx-checkpoints`` (default 32 saved SWA states per slot) bound host
    memory the estimate does not count; 0 turns them off.
    """
    args = [
        "--fit", "off",
        "-c", str(settings.n_ctx),
        "-np", str(settings.n_parallel),
        "--kv-unified" if settings.kv_unified else "--no-kv-unified",
        "-b", str(settings.n_batch),
        "-ub", str(settings.n_ubatch),
        "-ngl", str(settings.n_gpu_layers),
        "-fa", "on" if settings.flash_attn else "off",
        "-ctk", settings.cache_type_k,
        "-ctv", settings.cache_type_v,
        "--cache-ram", str(cache_ram_mib),
        "--ctx-checkpoints", str(ctx_checkpoints),
        "--load-mode", "mmap" if settings.use_mmap else "none",
    ]
    if settings.n_gpu_layers:
        args += ["-sm", settings.split_mode]
        if settings.tensor_split:
            args += ["-ts", ",".join(f"{share:g}" for share in settings.tensor_split)]
    if settings.swa_full:
        args.append("--swa-full")
    return tuple(args)
