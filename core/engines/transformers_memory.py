"""What ``transformers serve`` holds while it answers one prompt: the model of its peak memory.

``transformers serve`` (5.23, default path, no continuous batching) prefills the whole prompt in one forward
pass and allocates as it goes: there is no preallocated pool and no prefill chunking. Its peak for a prompt of
``T`` tokens is

    weights + runtime + KV cache(T) + prefill activations(T)

where the activations are what one decoder layer keeps alive at once for ``T`` rows: the MLP's three
``T × intermediate`` tensors (act(gate), up, their product) and about eleven ``T × hidden`` tensors (residual
stream, the norms' float32 copies, q / attention output / o_proj output), plus a fixed slice of allocator blocks
the first long forward adds. Model types whose transformers classes cannot use SDPA (``_supports_sdpa = False``:
Gemma 2's logit soft-capping, gpt-oss's sinks, …) run eager attention, which materialises the ``T × T`` scores of
every head: scores, the soft-capped copies and the float32 softmax, about seven elements of the compute dtype per
score at the peak.

Fitted to one fresh server per prompt length on an H200 (scripts/check-gpu-engines; the figures are
tests/unit/fixtures/gpu_measurements/transformers-h200.json): for Llama-3.1-8B, Qwen2.5-7B, Mistral-Nemo-12B,
Qwen3-0.6B and Gemma-2-9B at 2k-131k tokens the prediction is 0.2-6.4 % above the measured peak, never below it
(tests/unit/test_transformers_memory.py).
"""

from __future__ import annotations

from core.sizing import TORCH_DTYPE_BYTES, ModelShape, kv_cache_bytes

#: NVML's figure for the server process after loading, minus the weights: the CUDA context, cuBLAS handles and
#: the caching allocator's first blocks (0.546-0.643 GB on the H200, torch 2.11 + CUDA 13.0).
CUDA_RUNTIME_BYTES = 650_000_000
#: What the first long forward adds beyond the per-token terms (allocator rounding, rotary tables, workspaces).
PREFILL_FIXED_BYTES = 450_000_000
#: Live ``T × size`` tensors at the peak of one decoder layer, in elements of the compute dtype.
PREFILL_INTERMEDIATE_TENSORS = 3
PREFILL_HIDDEN_TENSORS = 11
#: Elements of the compute dtype per attention score at the peak of eager attention.
EAGER_SCORE_ELEMENTS = 7
#: Model types whose transformers 5.23 classes set ``_supports_sdpa = False`` (decoder LLMs among them).
EAGER_ATTENTION_MODEL_TYPES = frozenset(
    {"deepseek_v4", "flint", "gemma2", "gemma4", "gemma4_text", "gpt_oss", "granite_swa", "granitemoe_swa",
     "hy_v4", "inkling2", "inkling2_text", "mimo_v2_flash", "t5gemma", "vaultgemma"}
)  # fmt: skip


def eager_attention(shape: ModelShape) -> bool:
    """Whether transformers runs this model's attention eagerly (no SDPA), materialising the score matrix."""
    return (shape.model_type or "") in EAGER_ATTENTION_MODEL_TYPES


def _intermediate(shape: ModelShape) -> int:
    dense = shape.intermediate_size or 4 * shape.hidden_size
    if shape.moe_intermediate_size and shape.num_experts_per_token:
        # the routed experts' rows for T tokens add up to T × top_k rows of one expert's width
        return max(dense, shape.moe_intermediate_size * shape.num_experts_per_token)
    return dense


def prefill_activation_bytes(*, shape: ModelShape, tokens: int, dtype: str) -> int:
    """Activations of prefilling a ``tokens``-token prompt in one forward pass, at their peak."""
    if tokens <= 0:
        return 0
    element = TORCH_DTYPE_BYTES[dtype]
    per_token = element * (PREFILL_INTERMEDIATE_TENSORS * _intermediate(shape) + PREFILL_HIDDEN_TENSORS *
                           shape.hidden_size)  # fmt: skip
    scores = 0
    if eager_attention(shape):
        scores = EAGER_SCORE_ELEMENTS * element * shape.num_attention_heads * tokens * tokens
    return PREFILL_FIXED_BYTES + per_token * tokens + scores


def peak_bytes(*, shape: ModelShape, weights: int, runtime: int, tokens: int, dtype: str) -> int:
    """The server's whole peak for one prompt of ``tokens`` tokens."""
    kv = kv_cache_bytes(shape=shape, tokens=tokens, kv_dtype_bytes=TORCH_DTYPE_BYTES[dtype])
    return weights + runtime + kv + prefill_activation_bytes(shape=shape, tokens=tokens, dtype=dtype)


def longest_prompt(*, shape: ModelShape, room: int, dtype: str, limit: int) -> int:
    """The longest prompt (≤ ``limit``) whose KV cache and prefill activations fit in ``room`` bytes."""

    def need(tokens: int) -> int:
        kv = kv_cache_bytes(shape=shape, tokens=tokens, kv_dtype_bytes=TORCH_DTYPE_BYTES[dtype])
        return kv + prefill_activation_bytes(shape=shape, tokens=tokens, dtype=dtype)

    if room <= 0 or need(1) > room:
        return 0
    if need(limit) <= room:
        return limit
    low, high = 1, limit  # need(low) <= room < need(high); both terms grow with tokens
    while high - low > 1:
        middle = (low + high) // 2
        if need(middle) <= room:
            low = middle
        else:
            high = middle
    return low
