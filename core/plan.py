"""The planner: choose the engine for a model on a target, let that engine plan, explain the choice.

Everything an engine knows about itself (its flags, parallelism, memory model, images) lives in its
module under ``core/engines/``; this module only holds the policy of which engine to prefer where, the
checks common to every engine, and the JSON view of a plan.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from core import errors
from core.engines import ENGINES, Engine, engine_for
from core.engines.shared import (
    FALLBACK_CONTEXT,
    KV_MARGIN_DENSE,
    KV_MARGIN_MOE_OR_MLA,
    MAX_MODEL_LEN_MULTIPLE,
    PlanRequest,
    gpu_label,
    min_compute_capability,
)
from core.engines.versions import VLLM_IMAGE_CUDA_VERSION, VLLM_MIN_COMPUTE_CAPABILITY
from core.engines.vllm import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    MAX_NODES,
    tensor_parallel_problem,
    valid_tensor_parallel_sizes,
)
from core.errors import EzRunnerError, InvalidOptionsError
from core.hardware import Target
from core.hubs.assemble import MAX_CONTEXT_TOKENS
from core.hubs.base import ModelInfo, WeightStats
from core.llamacpp_memory import CACHE_TYPES
from core.planning import Alternative, EngineDraft, GpuBudget, Note, Options, Plan, PlanWarning
from core.refs import validate_image_ref
from core.sizing import GIB, model_shape, normalise_dtype

# CHECKS EVERY ENGINE SHARES


# The largest values an option can take: far above any model or server (the longest context published is
# 10,485,760 tokens; llama.cpp decodes a few hundred sequences at once at most): past them it is a typo.
MAX_OPTION_TOKENS = MAX_CONTEXT_TOKENS
MAX_PARALLEL = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# --api-key-env: upper case (POSIX leaves lower case to applications, and load.sh's own variables are lower
# case but for those below), and none the images, their shells, Python, the engines, load.sh or Kubernetes read
# for themselves: `docker run -e NAME` with one of them would change how the server runs (PATH, PORT,
# HF_HUB_OFFLINE, ...). The engines' own key variables (VLLM_API_KEY, LLAMA_API_KEY) stay allowed.
_API_KEY_ENV = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_RESERVED_ENV = frozenset(
    {"PATH", "HOME", "PORT", "PWD", "OLDPWD", "SHELL", "USER", "LOGNAME", "HOSTNAME", "IFS", "ENV", "LANG", "TERM",
     "TZ", "TMPDIR", "DO_NOT_TRACK", "CDPATH", "PS1", "PS2", "PS4", "SECONDS", "RANDOM", "LINENO", "UID", "EUID",
     "PPID", "OPTARG", "OPTIND", "REPLY",
     # load.sh's settings (templates/load.sh.j2)
     "NAME", "NETWORK", "TIMEOUT", "START", "IMAGE", "ARCHIVE", "PARTS", "HEALTH_PATH"}
)  # fmt: skip
_RESERVED_ENV_PREFIXES = (
    "LD_", "LC_", "BASH", "PYTHON", "HF_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "VLLM_", "LLAMA_ARG_", "GGML_",
    "CUDA_", "NVIDIA_", "NCCL_", "RAY_", "HIP_", "ROCR_", "OMP_", "KUBERNETES_", "LWS_", "EZRUNNER_",
)  # fmt: skip


def check_api_key_env(name: str) -> None:
    """``--api-key-env NAME``: an environment variable name the image does not use for anything else."""
    if not _API_KEY_ENV.fullmatch(name):
        raise InvalidOptionsError(
            f"--api-key-env {name[:80]!r} is not an upper-case environment variable name.",
            hint="Use capital letters, digits and '_', not starting with a digit, e.g. --api-key-env MY_API_KEY.",
            field=errors.API_KEY_ENV,
        )
    own = {engine.api_key_env for engine in ENGINES.values()}
    if name not in own and (name in _RESERVED_ENV or name.startswith(_RESERVED_ENV_PREFIXES)):
        raise InvalidOptionsError(
            f"--api-key-env {name} names a variable the image or its engine already reads for something else.",
            hint="Choose a name of your own, e.g. --api-key-env MY_API_KEY.",
            field=errors.API_KEY_ENV,
        )


def validate_options(*, options: Options, target: Target) -> None:
    """Refuse options no plan can honour, naming the option (``error.field``); cheap, so front ends call it
    before asking a hub anything. ``plan()`` calls it too."""
    util = options.gpu_memory_utilization
    if util is not None and not (0 < util <= 1):  # nan fails both comparisons
        raise InvalidOptionsError(
            f"gpu_memory_utilization must be above 0 and at most 1; got {util}.",
            hint="Use a fraction such as 0.9 (90 % of each GPU's memory).",
            field=errors.GPU_MEMORY_UTILIZATION,
        )
    if options.max_model_len is not None and not 1 <= options.max_model_len <= MAX_OPTION_TOKENS:
        raise InvalidOptionsError(
            f"max_model_len must be a positive number of tokens up to {MAX_OPTION_TOKENS:,}; "
            f"got {options.max_model_len:,}.",
            hint="Leave it unset to let the planner choose, or give e.g. 8192.",
            field=errors.MAX_MODEL_LEN,
        )
    if options.dtype not in (None, "auto") and normalise_dtype(options.dtype) is None:
        raise InvalidOptionsError(
            f"Unknown dtype {options.dtype!r}.", hint="Use auto, bfloat16, float16 or float32.", field=errors.DTYPE
        )
    if not 1 <= options.port <= 65535:
        raise InvalidOptionsError(
            f"Port {options.port} is out of range.", hint="Use a port from 1 to 65535.", field=errors.PORT
        )
    if options.parallel is not None and not 1 <= options.parallel <= MAX_PARALLEL:
        raise InvalidOptionsError(
            f"parallel must be 1 to {MAX_PARALLEL:,} sequences decoded at once; got {options.parallel:,}.",
            hint="Leave it unset to let the planner choose.",
            field=errors.PARALLEL,
        )
    if options.base_image is not None:
        validate_image_ref(options.base_image, field=errors.BASE_IMAGE)
    for value, field, what in (
        (options.quant, errors.QUANT, "GGUF quantization"),
        (options.gguf_pre_tokenizer, errors.GGUF_PRE_TOKENIZER, "pre-tokenizer"),
    ):
        if value is not None and not _NAME.fullmatch(value):
            raise InvalidOptionsError(
                f"{value[:80]!r} is not a {what} name.",
                hint="Names use letters, digits, '.', '_' and '-' (e.g. Q4_K_M, llama-bpe).",
                field=field,
            )
    if options.api_key_env is not None:
        check_api_key_env(options.api_key_env)
    if options.kv_cache_type is not None and options.kv_cache_type not in CACHE_TYPES:
        raise InvalidOptionsError(
            f"llama.cpp's KV cache types are {', '.join(CACHE_TYPES)}, not {options.kv_cache_type[:40]!r}.",
            hint="Pick one of them, or leave it unset for the planner's choice.",
            field=errors.KV_CACHE_TYPE,
        )
    if options.engine != "auto":
        engine_for(options.engine)  # an unknown name is an error that lists the engines
    tp = options.tensor_parallel_size
    if tp is not None and tp < 1:
        raise InvalidOptionsError(
            f"tensor_parallel_size must be at least 1; got {tp}.",
            hint="Leave it unset to let the planner choose.",
            field=errors.TENSOR_PARALLEL_SIZE,
        )
    if tp is not None and tp > max(target.gpu_count, 1):
        raise InvalidOptionsError(
            f"tensor_parallel_size {tp} needs {tp} GPUs, but the target has {target.gpu_count}.",
            hint=f"Use at most {max(target.gpu_count, 1)}, or describe a server with more GPUs.",
            field=errors.TENSOR_PARALLEL_SIZE,
        )
    dp, nodes = options.data_parallel_size, options.nodes
    if dp is not None and dp < 1:
        raise InvalidOptionsError(
            f"data_parallel_size must be at least 1; got {dp}.", hint="Leave it unset to let the planner choose."
        )
    if dp is not None and dp * (tp or 1) > max(target.gpu_count, 1):
        raise InvalidOptionsError(
            f"data_parallel_size {dp} × tensor_parallel_size {tp or 1} needs {dp * (tp or 1)} GPUs, but the target "
            f"has {target.gpu_count}.",
            hint="Lower one of them so that their product is at most the number of GPUs.",
        )
    if not 1 <= nodes <= MAX_NODES:
        raise InvalidOptionsError(
            f"nodes must be from 1 to {MAX_NODES}; got {nodes}.", hint="Give the number of identical servers."
        )
    if nodes > 1 and dp is not None and dp > 1:
        raise InvalidOptionsError(
            "Data-parallel replicas run on one node, and nodes > 1 spreads one copy of the model over several.",
            hint="Drop --data-parallel-size, or plan one node (each node can run its own pack with replicas).",
        )
    vllm_only = [name for name, on in (("nodes", nodes > 1), ("data_parallel_size", (dp or 1) > 1)) if on]
    if vllm_only and (target.is_cpu_only or options.engine not in ("auto", "vllm")):
        where = "a CPU target" if target.is_cpu_only else f"engine {options.engine}"
        raise InvalidOptionsError(
            f"{' and '.join(vllm_only)} need vLLM on NVIDIA GPUs, which {where} does not run.",
            hint="Drop them, or plan with --engine vllm on an NVIDIA GPU target.",
        )


# THE PLANNER


def plan(*, model: ModelInfo, target: Target, options: Options | None = None) -> Plan:
    """Pure function: same inputs, same plan. Never touches the network or weight data."""
    options = options or Options()
    validate_options(options=options, target=target)
    shape = model_shape(config=model.config, quantization=model.quantization)
    context = model.context_length or shape.context_length or FALLBACK_CONTEXT
    if options.max_model_len is not None and options.max_model_len > context:
        raise InvalidOptionsError(
            f"max_model_len {options.max_model_len:,} is longer than the model's context of {context:,} tokens.",
            hint=f"Use at most {context:,}.",
            field=errors.MAX_MODEL_LEN,
        )
    margin = KV_MARGIN_MOE_OR_MLA if (shape.is_moe or shape.is_mla) else KV_MARGIN_DENSE
    request = PlanRequest(model=model, shape=shape, context=context, margin=margin, target=target, options=options)
    draft, considered = _choose(request=request)
    engine = engine_for(draft.engine)
    reasons = [*draft.reasons]
    if context == FALLBACK_CONTEXT and not (model.context_length or shape.context_length):
        reasons.append(
            Note(
                "context_unknown",
                f"config.json names no context length; the plan assumes {FALLBACK_CONTEXT:,} tokens.",
                {"context_length": FALLBACK_CONTEXT},
            )
        )
    packed = model if draft.files is None else dataclasses.replace(model, files=draft.files)
    result = Plan(
        model=packed,
        target=target,
        options=options,
        engine=draft.engine,
        base_image="",
        tensor_parallel_size=draft.tensor_parallel_size,
        max_model_len=draft.max_model_len,
        dtype=draft.dtype,
        gpu_memory_utilization=draft.gpu_memory_utilization,
        fits=draft.fits,
        weights_bytes=draft.weights_bytes,
        kv_cache_bytes_per_token=draft.kv_cache_bytes_per_token,
        per_gpu=draft.budgets,
        reasons=tuple(reasons),
        warnings=tuple(draft.warnings),
        device=draft.device,
        context_length=context,
        kv_cache_tokens=draft.kv_cache_tokens,
        valid_tensor_parallel_sizes=draft.valid_tps,
        settings=dict(draft.settings),
        max_concurrency=draft.max_concurrency,
        alternatives=tuple(_alternative(name, other) for name, other in considered if name != draft.engine),
        pipeline_parallel_size=draft.pipeline_parallel_size,
        data_parallel_size=draft.data_parallel_size,
    )
    idle = result.idle_gpu_indices
    if idle and draft.device != "cpu" and draft.engine != "vllm":
        # Replicas of llama.cpp or transformers serve would each need their own port and a balancer in front;
        # one server per pack keeps load.sh, the manifests and the health check one thing.
        result = dataclasses.replace(
            result,
            reasons=(
                *result.reasons,
                Note(
                    "gpus_idle_single_server",
                    f"{engine.label} serves one copy of the model, so GPU{'s' if len(idle) > 1 else ''} "
                    f"{', '.join(map(str, idle))} stay{'' if len(idle) > 1 else 's'} idle; vLLM would run one "
                    "replica per group of GPUs (data parallel) behind one port.",
                    {"idle_gpus": list(idle), "engine": draft.engine},
                ),
            ),
        )
    base_image = options.base_image or engine.default_base_image(plan=result)
    return dataclasses.replace(result, base_image=base_image)


def _alternative(name: str, draft: EngineDraft) -> Alternative:
    label = engine_for(name).label
    if draft.fits:
        summary = f"{label}: fits, {draft.max_model_len:,} tokens of context on {draft.device.upper()}"
    else:
        summary = f"{label}: does not fit ({', '.join(draft.hard_failures)})"
    return Alternative(engine=name, fits=draft.fits, max_model_len=draft.max_model_len, summary=summary)


def _forced(*, request: PlanRequest) -> EngineDraft:
    options = request.options
    engine = engine_for(options.engine)
    refusal = engine.refusal(model=request.model, target=request.target, options=options)
    if refusal:
        others = [n for n, e in ENGINES.items() if n != engine.name and not _refuses(e, request)]
        raise InvalidOptionsError(
            refusal, hint=f"Choose {' or '.join(others)} (or auto)." if others else "Describe another target."
        )
    draft = engine.plan(request=request)
    draft.reasons.insert(0, Note("engine_forced", f"Engine {engine.label}, as requested.", {"engine": engine.name}))
    return draft


def _refuses(engine: Engine, request: PlanRequest) -> bool:
    return engine.refusal(model=request.model, target=request.target, options=request.options) is not None


def _choose(*, request: PlanRequest) -> tuple[EngineDraft, list[tuple[str, EngineDraft]]]:
    """The engine's draft, and every draft made on the way (for the alternatives the plan lists)."""
    if request.options.engine != "auto":
        return _forced(request=request), []
    target, options = request.target, request.options
    if options.nodes > 1 or (options.data_parallel_size or 1) > 1:
        vllm = engine_for("vllm")
        refusal = vllm.refusal(model=request.model, target=target, options=options)
        if refusal:
            raise InvalidOptionsError(refusal, hint="Drop --nodes and --data-parallel-size to plan another engine.")
        draft = vllm.plan(request=request)
        asked = "nodes" if options.nodes > 1 else "data-parallel replicas"
        draft.reasons.insert(
            0, Note("engine_vllm_parallel", f"Engine {vllm.label}: {asked} run on vLLM only.", {"engine": "vllm"})
        )
        return draft, []
    gpus = target.gpus
    considered: list[tuple[str, EngineDraft]] = []

    def attempt(name: str, why: Note) -> EngineDraft:
        draft = engine_for(name).plan(request=request)
        draft.reasons.insert(0, why)
        considered.append((name, draft))
        return draft

    vllm_label = engine_for("vllm").label
    llama = engine_for("llama.cpp")
    model = request.model
    if model.format == "gguf":
        why = Note(
            "engine_gguf",
            f"Engine {llama.label}: the model is GGUF, which llama.cpp serves (vLLM and transformers serve "
            "packs are made from safetensors).",
            {"engine": "llama.cpp"},
        )
        draft = attempt("llama.cpp", why)
        _vllm_instead(draft=draft, request=request)
        return draft, considered
    llama_refusal = llama.refusal(model=model, target=target, options=options)
    if options.quant is not None and llama_refusal is None:
        why = Note(
            "engine_quant",
            f"Engine {llama.label}: a GGUF quantization ({options.quant}) was asked for; the pack converts the "
            "model to it.",
            {"engine": "llama.cpp", "quant": options.quant},
        )
        return attempt("llama.cpp", why), considered
    if target.is_cpu_only:
        why = Note(
            "engine_cpu",
            "Engine transformers serve: the target has no GPU, and vLLM's official image needs an NVIDIA GPU.",
            {"engine": "transformers"},
        )
        draft = attempt("transformers", why)
        if llama_refusal is None:
            draft.warnings.append(_gguf_route(model=model))
        return draft, considered
    if any(g.vendor != "nvidia" for g in gpus):
        if llama_refusal is None:
            why = Note(
                "engine_non_nvidia",
                f"Engine {llama.label}: {gpu_label(gpus)} is not an NVIDIA GPU; llama.cpp runs on it "
                "(ROCm or Vulkan), vLLM's official image does not. The model is converted to GGUF when packed.",
                {"engine": "llama.cpp", "gpus": gpu_label(gpus)},
            )
            return attempt("llama.cpp", why), considered
        why = Note(
            "engine_cpu",
            "Engine transformers serve on the CPU: the GPUs are not NVIDIA GPUs, and llama.cpp cannot take this "
            f"model ({llama_refusal}).",
            {"engine": "transformers"},
        )
        return attempt("transformers", why), considered
    cc = min_compute_capability(gpus)
    need = ".".join(map(str, VLLM_MIN_COMPUTE_CAPABILITY))
    if cc < VLLM_MIN_COMPUTE_CAPABILITY:
        if options.tensor_parallel_size and options.tensor_parallel_size > 1:
            raise InvalidOptionsError(
                f"tensor_parallel_size {options.tensor_parallel_size} needs vLLM, which does not support these "
                f"GPUs (compute capability {cc[0]}.{cc[1]} < {need}).",
                hint="Drop --tensor-parallel-size to run with transformers on one GPU.",
            )
        if llama_refusal is None:
            why = Note(
                "engine_old_gpu_llamacpp",
                f"Engine {llama.label}: {gpu_label(gpus)} has compute capability {cc[0]}.{cc[1]}, and {vllm_label} "
                f"(CUDA {VLLM_IMAGE_CUDA_VERSION}) supports {need} and newer; llama.cpp's CUDA image runs there "
                "and decodes many times faster than transformers serve. The model is converted to GGUF when packed.",
                {"engine": "llama.cpp", "compute_capability": f"{cc[0]}.{cc[1]}", "vllm_minimum": need},
            )
            draft = attempt("llama.cpp", why)
            if draft.fits:
                return draft, considered
        why = Note(
            "engine_old_gpu",
            f"Engine transformers serve: {gpu_label(gpus)} has compute capability {cc[0]}.{cc[1]}, and "
            f"{vllm_label} (CUDA {VLLM_IMAGE_CUDA_VERSION}) supports {need} and newer.",
            {"engine": "transformers", "compute_capability": f"{cc[0]}.{cc[1]}", "vllm_minimum": need},
        )
        return attempt("transformers", why), considered
    vllm_draft = engine_for("vllm").plan(request=request)
    considered.append(("vllm", vllm_draft))
    # Options that only mean something to vLLM keep vLLM, so the warning can say what would fit there.
    vllm_options = options.tensor_parallel_size or options.gpu_memory_utilization or options.max_model_len
    if vllm_draft.fits or vllm_options:
        vllm_draft.reasons.insert(
            0,
            Note(
                "engine_vllm",
                f"Engine {vllm_label}: {gpu_label(gpus)} (compute capability {cc[0]}.{cc[1]}) is supported and "
                "the model fits; vLLM batches many requests with a paged KV cache.",
                {"engine": "vllm", "gpus": gpu_label(gpus)},
            ),
        )
        return vllm_draft, considered
    why = Note(
        "engine_vllm_does_not_fit",
        f"Engine transformers serve: vLLM cannot fit the model on {gpu_label(gpus)} with a usable context, "
        "and transformers does not preallocate a KV cache pool.",
        {"engine": "transformers"},
    )
    fallback = attempt("transformers", why)
    if fallback.fits and not any(w.code == "ram_unknown" for w in fallback.warnings):
        # vLLM across several such servers is the faster way out: keep it in view (its change sets --nodes).
        fallback.warnings.extend(w for w in vllm_draft.warnings if w.code == "needs_more_nodes")
        return fallback, considered
    vllm_draft.reasons.insert(
        0,
        Note(
            "engine_vllm_nothing_fits",
            f"Engine {vllm_label} on {gpu_label(gpus)}: nothing fits this target; the warnings say what would.",
            {"engine": "vllm"},
        ),
    )
    return vllm_draft, considered


def _gguf_route(*, model: ModelInfo) -> PlanWarning:
    return PlanWarning(
        "gguf_route",
        "On a CPU, llama.cpp with a GGUF quantization of this model answers several times faster than "
        f"transformers serve and needs far less RAM: pack a GGUF repository of it (search for '{model.name} GGUF'), "
        "or let the pack convert it (engine llama.cpp).",
        {"model": model.repo_id},
        {"engine": "llama.cpp"},
    )


def _vllm_instead(*, draft: EngineDraft, request: PlanRequest) -> None:
    """For a GGUF on NVIDIA GPUs that vLLM supports: say what vLLM would give with the safetensors weights."""
    target, model = request.target, request.model
    gpus = target.gpus
    if not gpus or any(g.vendor != "nvidia" for g in gpus):
        return
    if min_compute_capability(gpus) < VLLM_MIN_COMPUTE_CAPABILITY:
        return
    header = model.gguf.header if model.gguf is not None else None
    if header is None:
        return
    unquantized = dataclasses.replace(
        model, format="safetensors", gguf=None, weights=WeightStats(parameters_by_dtype={"BF16": header.n_elements})
    )
    vllm_request = dataclasses.replace(request, model=unquantized, options=Options(port=request.options.port))
    try:
        vllm = engine_for("vllm").plan(request=vllm_request)
    except EzRunnerError:
        return
    if not vllm.fits or vllm.kv_cache_tokens < 4 * max(draft.max_model_len, 1):
        return
    base = header.metadata.get("general.base_model.0.repo_url") or header.metadata.get("general.basename")
    sequences = vllm.kv_cache_tokens // max(vllm.max_model_len, 1)
    draft.warnings.append(
        PlanWarning(
            "vllm_would_serve_more",
            f"This target could run the unquantized model under vLLM: {vllm.max_model_len:,} tokens of context and "
            f"about {sequences} such sequences at once (KV cache {vllm.kv_cache_tokens:,} tokens), where llama.cpp "
            f"here serves {int(draft.max_concurrency or 1)} slot(s) of {draft.max_model_len:,}. For many users, pack "
            f"the safetensors repository{f' ({base})' if isinstance(base, str) else ''} of the model with vLLM.",
            {"vllm_max_model_len": vllm.max_model_len, "vllm_kv_tokens": vllm.kv_cache_tokens,
             "base_model": base if isinstance(base, str) else None},
        )
    )


# JSON VIEW


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain JSON types (``ezrunner plan --json``)."""
    target = plan.target
    return {
        "model": {
            "id": plan.model.repo_id,
            "source": plan.model.ref.source,
            "revision": plan.model.revision,
            "commit": plan.model.commit,
            "architecture": plan.model.architecture,
            "path": str(plan.model.ref.path) if plan.model.ref.path else None,  # local folders
        },
        # what the user chose (None: the planner decided), so a recorded plan can be reopened as it was
        "options": dataclasses.asdict(plan.options),
        "target": {
            "label": target.label,
            "origin": target.origin,
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "memory_bytes": g.memory_bytes,
                    "compute_capability": g.compute_capability_str,
                }
                for g in target.gpus
            ],
            "driver_version": target.driver_version,
            "cuda_version": target.cuda_version,
            "cpu_cores": target.cpu_cores,
            "ram_bytes": target.ram_bytes,
        },
        "engine": plan.engine,
        "device": plan.device,
        "base_image": plan.base_image,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "pipeline_parallel_size": plan.pipeline_parallel_size,
        "data_parallel_size": plan.data_parallel_size,
        "nodes": plan.nodes,
        "gpus_per_node": plan.gpus_per_node,
        "idle_gpu_indices": list(plan.idle_gpu_indices),
        "valid_tensor_parallel_sizes": list(plan.valid_tensor_parallel_sizes),
        "settings": dict(plan.settings),
        "max_model_len": plan.max_model_len,
        "context_length": plan.context_length,
        "dtype": plan.dtype,
        "gpu_memory_utilization": plan.gpu_memory_utilization,
        "fits": plan.fits,
        "weights_bytes": plan.weights_bytes,
        "kv_cache_bytes_per_token": plan.kv_cache_bytes_per_token,
        "kv_cache_tokens": plan.kv_cache_tokens,
        "max_concurrency": plan.max_concurrency,
        "per_gpu": [
            {
                "index": b.index,
                "weights_bytes": b.weights_bytes,
                "kv_cache_bytes": b.kv_cache_bytes,
                "overhead_bytes": b.overhead_bytes,
                "capacity_bytes": b.capacity_bytes,
                "total_bytes": b.total_bytes,
            }
            for b in plan.per_gpu
        ],
        "reasons": [{"code": n.code, "text": n.text, "params": dict(n.params)} for n in plan.reasons],
        "warnings": [
            {"code": w.code, "text": w.text, "params": dict(w.params), "change": dict(w.change)}
            for w in plan.warnings
        ],
        "alternatives": [
            {"engine": a.engine, "fits": a.fits, "max_model_len": a.max_model_len, "summary": a.summary}
            for a in plan.alternatives
        ],
        # the profiles' plans (only once a pack added them, so plans made before keep their JSON)
        **({"neighbours": [_neighbour_to_dict(n) for n in plan.neighbours]} if plan.neighbours else {}),
    }


def _neighbour_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "target": plan.target.label,
        "device": plan.device,
        "gpus_per_node": plan.gpus_per_node,
        "gpu_memory_bytes": plan.target.gpus[0].memory_bytes if plan.target.gpus else None,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "data_parallel_size": plan.data_parallel_size,
        "max_model_len": plan.max_model_len,
        "dtype": plan.dtype,
        "kv_cache_tokens": plan.kv_cache_tokens,
    }


__all__ = [
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "GIB",
    "KV_MARGIN_DENSE",
    "KV_MARGIN_MOE_OR_MLA",
    "MAX_MODEL_LEN_MULTIPLE",
    "GpuBudget",
    "Note",
    "Options",
    "Plan",
    "PlanWarning",
    "plan",
    "plan_to_dict",
    "tensor_parallel_problem",
    "valid_tensor_parallel_sizes",
]
