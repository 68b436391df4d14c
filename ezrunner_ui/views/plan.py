"""Step 3: the plan (engine, parallelism, context length, memory per GPU) and the Dockerfile it renders to."""

from __future__ import annotations

import io
import zipfile
from dataclasses import fields, replace
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core.errors import EzRunnerError
from core.plan import Options, Plan
from core.render import BuildSpec, render
from ezrunner_ui.app_options import (
    PLAN_PREFIX,
    PLAN_WIDGETS,
    apply_options,
    engine_options_form,
    forget_option_widgets,
    show_notices,
)
from ezrunner_ui.i18n import fmt_bytes, fmt_target, option_label, t, translate_note
from ezrunner_ui.state import PAGE_BUILD, PAGE_HARDWARE, PAGE_MODEL, WizardState, edited_dockerfile, seed, wizard
from ezrunner_ui.ui_errors import show_error

GIB = 1 << 30
PART_COLOURS = ["#2563eb", "#93c5fd", "#f59e0b"]  # weights, KV cache, overhead
CAPACITY_COLOUR = "#111827"
DTYPES = (None, "auto", "bfloat16", "float16", "float32")


def _apply_change(change: dict[str, Any]) -> None:
    """A warning's fix: merge its Options delta and let the widgets re-seed from the new options."""
    state = wizard()
    known = {f.name for f in fields(Options)}
    apply_options(state, replace(state.options, **{k: v for k, v in change.items() if k in known}), from_callback=True)
    forget_option_widgets()


def _reset_options() -> None:
    _apply_change({f.name: f.default for f in fields(Options)})


def _options_form(state: WizardState) -> None:
    with st.expander(t("plan.advanced"), icon=":material/tune:"):
        engine_options_form(state, prefix=PLAN_PREFIX)
        # seeded after the engine options: an engine change there may have reset the base image
        for key, name in PLAN_WIDGETS.items():
            value = getattr(state.options, name)
            seed(key, "" if key == "opt_base_image" and value is None else value)
        first, second, third = st.columns(3)
        first.selectbox(
            t("plan.dtype"),
            options=DTYPES,
            format_func={d: d or t("plan.auto") for d in DTYPES}.__getitem__,
            key="opt_dtype",
        )
        second.number_input(
            t("plan.max_model_len"),
            key="opt_max_len",
            value=None,
            min_value=1,
            step=1024,
            placeholder=t("plan.auto"),
        )
        second.number_input(
            t("plan.tensor_parallel"),
            key="opt_tp",
            value=None,
            min_value=1,
            step=1,
            placeholder=t("plan.auto"),
        )
        first.number_input(
            t("plan.data_parallel"),
            key="opt_dp",
            value=None,
            min_value=1,
            step=1,
            placeholder=t("plan.auto"),
        )
        third.number_input(t("plan.nodes"), key="opt_nodes", min_value=1, max_value=64, step=1)
        third.number_input(
            t("plan.gpu_memory_utilization"),
            key="opt_gpu_util",
            value=None,
            min_value=0.05,
            max_value=1.0,
            step=0.01,
            placeholder=t("plan.engine_default"),
        )
        first.number_input(t("plan.port"), key="opt_port", min_value=1, max_value=65535, step=1)
        st.text_input(t("plan.base_image"), key="opt_base_image", placeholder=t("plan.base_image_placeholder"))
        st.button(t("plan.reset"), key="reset_options", on_click=_reset_options)
    values = {name: st.session_state[key] for key, name in PLAN_WIDGETS.items()}
    values["base_image"] = str(values["base_image"] or "").strip() or None
    apply_options(state, replace(state.options, **values))


def _chart_unit(the_plan: Plan) -> tuple[str, int]:
    """GiB for real models, MiB for tiny ones (a 50 MB model is not "0.0 GiB")."""
    largest = max([b.capacity_bytes for b in the_plan.per_gpu] + [b.used_bytes for b in the_plan.per_gpu] + [1])
    return ("GiB", GIB) if largest >= GIB else ("MiB", 1 << 20)


def _idle_gpus(the_plan: Plan) -> list[tuple[int, int]]:
    """(index, total bytes) of the target's GPUs the plan leaves idle (TP smaller than the GPU count)."""
    used = {b.index for b in the_plan.per_gpu}
    if None in used:
        return []  # the plan runs on the CPU: the GPUs are not part of its picture
    gpus = [(gpu.index if gpu.index is not None else n, gpu.memory_bytes) for n, gpu in enumerate(the_plan.target.gpus)]
    return [(index, total) for index, total in gpus if index not in used]


def _memory_chart(the_plan: Plan) -> None:
    """Every GPU (idle ones marked), or RAM for a CPU plan: weights / KV cache / overhead to scale, with the
    usable-memory mark; the KV cache also as tokens of context."""
    unit, scale = _chart_unit(the_plan)
    parts = (
        ("weights_bytes", t("plan.part_weights")),
        ("kv_cache_bytes", t("plan.part_kv")),
        ("overhead_bytes", t("plan.part_overhead")),
    )
    rows: list[dict[str, Any]] = []
    limits: list[dict[str, Any]] = []
    ram_unknown = False
    for budget in the_plan.per_gpu:
        label = t("plan.ram") if budget.index is None else t("plan.gpu_n", n=budget.index)
        for order, (attribute, name) in enumerate(parts):
            rows.append({"device": label, "part": name, unit: getattr(budget, attribute) / scale, "order": order})
        if budget.capacity_bytes > 0:
            limits.append({"device": label, unit: budget.capacity_bytes / scale, "what": t("plan.capacity")})
        else:
            ram_unknown = True  # no capacity mark at 0: the size of RAM is simply not known
    for index, total in _idle_gpus(the_plan):
        label = t("plan.gpu_idle", n=index)
        rows += [{"device": label, "part": name, unit: 0.0, "order": order} for order, (_, name) in enumerate(parts)]
        limits.append({"device": label, unit: total / scale, "what": t("plan.gpu_idle_what")})
    field = f"{unit}:Q"
    bars = (
        alt.Chart(pd.DataFrame(rows))
        .mark_bar()
        .encode(
            x=alt.X(f"sum({unit}):Q", title=unit, stack="zero"),
            y=alt.Y("device:N", title=None, sort=None),
            color=alt.Color(
                "part:N",
                title=None,
                sort=[name for _, name in parts],
                scale=alt.Scale(domain=[name for _, name in parts], range=PART_COLOURS),
            ),
            order=alt.Order("order:Q"),
            tooltip=["device:N", "part:N", alt.Tooltip(field, format=".2f")],
        )
    )
    layers: list[Any] = [bars]
    if limits:
        layers.append(
            alt.Chart(pd.DataFrame(limits))
            .mark_tick(color=CAPACITY_COLOUR, thickness=3, size=34)
            .encode(x=field, y=alt.Y("device:N", sort=None), tooltip=["what:N", alt.Tooltip(field, format=".2f")])
        )
    height = 60 + 48 * len({row["device"] for row in rows})
    st.altair_chart(alt.layer(*layers), width="stretch", height=height)
    st.caption(t("plan.chart_caption"))
    kv_size = fmt_bytes(sum(b.kv_cache_bytes for b in the_plan.per_gpu))
    if the_plan.max_concurrency is not None and the_plan.kv_cache_tokens:
        # an engine that preallocates its cache: the pool, in tokens
        st.caption(t("plan.kv_tokens", tokens=f"{the_plan.kv_cache_tokens:,}", size=kv_size))
    elif the_plan.max_model_len:
        # transformers grows its cache per request: what one request of the planned length takes
        st.caption(t("plan.kv_tokens_request", tokens=f"{the_plan.max_model_len:,}", size=kv_size))
    if ram_unknown:
        st.caption(t("plan.ram_unknown"))


def _context_zip(*, the_plan: Plan, spec: BuildSpec) -> bytes:
    """Dockerfile + README, small: the weights stay on the hub (or in the folder) until the build."""
    model = the_plan.model
    lines = [
        f"# Build context for {model.repo_id} @ {model.commit}",
        "",
        f"Engine: {the_plan.engine}; base image: {the_plan.base_image}",
        "(docker load it first: the build never pulls).",
        "",
        "1. Put the model files next to this Dockerfile, exactly at these paths:",
        "",
    ]
    for layer in spec.layers:
        lines += [f"   layers/{layer.name}/{f.path}  ({f.size} bytes)" for f in layer.files]
    if model.ref.source == "hf":
        lines += ["", f"   hf download {model.repo_id} --revision {model.commit} --local-dir model/"]
    elif model.ref.source == "ms":
        lines += [
            "",
            f"   modelscope download --model {model.repo_id} --revision {model.commit} --local_dir model/",
        ]
    lines += [
        "",
        f"2. docker build -t {spec.image_tag} .",
        f"3. docker save {spec.image_tag} -o image.tar",
        f"4. On the server: docker load -i image.tar && {spec.run_command()}",
        "",
    ]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Dockerfile", edited_dockerfile(wizard(), generated=spec.dockerfile) or spec.dockerfile)
        archive.writestr("README.md", "\n".join(lines))
    return buffer.getvalue()


def _summary(the_plan: Plan) -> None:
    engine, tp, length, memory = st.columns([2, 1, 1, 1])
    engine.metric(t("plan.engine"), t(f"engine.{the_plan.engine}"))
    layout = f"{the_plan.tensor_parallel_size}"
    if the_plan.data_parallel_size > 1:
        layout += f" × {the_plan.data_parallel_size}"
    if the_plan.nodes > 1:
        layout += f" · {t('plan.nodes_n', n=the_plan.nodes, pp=the_plan.pipeline_parallel_size)}"
    tp.metric(t("plan.tensor_parallel") + (" × " + t("plan.data_parallel") if the_plan.data_parallel_size > 1 else ""),
              layout)  # fmt: skip
    length.metric(t("plan.max_model_len"), f"{the_plan.max_model_len:,}")
    util = the_plan.gpu_memory_utilization
    memory.metric(t("plan.gpu_memory_utilization"), f"{util:.0%}" if util is not None else "—")
    st.caption(t("plan.base_image_line", image=the_plan.base_image, dtype=the_plan.dtype))
    if the_plan.engine == "llama.cpp":
        _llamacpp(the_plan)
    _kv_pool(the_plan)
    if the_plan.fits:
        st.success(t("plan.fits", weights=fmt_bytes(the_plan.weights_bytes)), icon=":material/check_circle:")
    else:
        st.error(t("plan.does_not_fit"), icon=":material/block:")


def _llamacpp(the_plan: Plan) -> None:
    """What llama.cpp plans: the GGUF quantization, how many layers go to the GPU, slots, KV cache type."""
    settings = the_plan.settings
    offload = str(settings.get("offload", "cpu"))
    layers = next((n.params.get("layers") for n in the_plan.reasons if n.code == "llamacpp_partial_offload"), None)
    gpu_layers = int(settings.get("n_gpu_layers", 0))
    quant, offloaded, slots, cache = st.columns(4)
    quant.metric(t("plan.quant"), str(settings.get("quant", "—")), help=t("plan.quant_file", file=settings.get(
        "model_file", "—"), size=fmt_bytes(settings.get("gguf_bytes"))))  # fmt: skip
    if offload == "partial" and layers:
        offloaded.metric(t("plan.gpu_layers"), t("plan.gpu_layers_partial", n=gpu_layers, total=layers))
    elif offload == "gpu":
        offloaded.metric(t("plan.gpu_layers"), t("plan.gpu_layers_all", n=gpu_layers))
    else:
        offloaded.metric(t("plan.gpu_layers"), t("plan.gpu_layers_none"))
    slots.metric(t("plan.parallel"), int(settings.get("n_parallel", 1)))
    cache.metric(t("plan.kv_cache_type"), str(settings.get("cache_type_k", "f16")))
    st.caption(t(f"plan.offload_{offload}", gpus=settings.get("gpus_used", 0)))
    if isinstance(settings.get("convert"), dict):
        st.info(t("plan.converts", quant=settings["quant"], size=fmt_bytes(settings.get("gguf_bytes"))),
                icon=":material/transform:")  # fmt: skip


def _kv_pool(the_plan: Plan) -> None:
    """The preallocated KV cache as tokens of context and sequences at once (vLLM's start-up figures, or
    llama.cpp's slots)."""
    if the_plan.max_concurrency is None:
        return  # the engine preallocates no pool (transformers)
    tokens, concurrency = st.columns(2)
    tokens.metric(t("plan.kv_pool_tokens"), f"{the_plan.kv_cache_tokens:,}")
    concurrency.metric(
        t("plan.kv_pool_concurrency", max_model_len=f"{the_plan.max_model_len:,}"), f"{the_plan.max_concurrency:.2f}×"
    )
    caption = "plan.kv_pool_caption_llamacpp" if the_plan.engine == "llama.cpp" else "plan.kv_pool_caption"
    st.caption(
        t(
            caption,
            tokens=f"{the_plan.kv_cache_tokens:,}",
            max_model_len=f"{the_plan.max_model_len:,}",
            concurrency=f"{the_plan.max_concurrency:.2f}",
            slots=f"{the_plan.max_concurrency:g}",
        )
    )


def _alternatives(the_plan: Plan) -> None:
    """The other engines the planner weighed, with their fit (core's figures, one row each)."""
    if not the_plan.alternatives:
        return
    st.subheader(t("plan.alternatives"))
    rows = [
        {
            t("plan.col_engine"): t(f"engine.{a.engine}"),
            t("plan.col_fits"): t("plan.yes") if a.fits else t("plan.no"),
            t("plan.col_context"): f"{a.max_model_len:,}" if a.fits else "—",
            t("plan.col_summary"): a.summary,
        }
        for a in the_plan.alternatives
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="alternatives_table")
    choices = [a.engine for a in the_plan.alternatives if a.fits]
    for engine in choices:
        st.button(t("plan.use_engine", engine=t(f"engine.{engine}")), key=f"use_engine_{engine}",
                  on_click=_apply_change, args=({"engine": engine},))  # fmt: skip


def _reasons(the_plan: Plan) -> None:
    st.subheader(t("plan.why"))
    for note in the_plan.reasons:
        st.markdown(f"- {translate_note(code=note.code, text=note.text, params=note.params)}")


def _warnings(the_plan: Plan) -> None:
    for index, warning in enumerate(the_plan.warnings):
        text = translate_note(code=warning.code, text=warning.text, params=warning.params, prefix="warning")
        with st.container(border=True):
            st.warning(text, icon=":material/warning:")
            if warning.change:
                change = ", ".join(f"{option_label(k)} {v}" for k, v in warning.change.items())
                st.button(
                    t("plan.apply_fix", change=change),
                    key=f"fix_{index}",
                    on_click=_apply_change,
                    args=(dict(warning.change),),
                )


def _dockerfile(generated: str) -> None:
    """The generated Dockerfile, and an editor whose result the Build step builds as written."""
    state = wizard()
    edited = edited_dockerfile(state, generated=generated)
    if edited is not None:
        st.info(t("plan.edited_note"), icon=":material/edit_note:")
    st.code(edited or generated, language="dockerfile")
    with st.expander(t("plan.edit"), icon=":material/edit:"):
        st.caption(t("plan.edit_help"))
        seed("dockerfile_edit", edited or generated)
        st.text_area(t("plan.dockerfile"), key="dockerfile_edit", height=400, label_visibility="collapsed")
        use, discard = st.columns(2)
        if use.button(t("plan.edit_use"), key="dockerfile_use", icon=":material/check:"):
            text = str(st.session_state["dockerfile_edit"])
            if text.strip() and text != generated:
                state.edited_dockerfile, state.edited_from = text, generated
            else:
                state.edited_dockerfile = state.edited_from = None
            st.rerun()
        if discard.button(t("plan.edit_discard"), key="dockerfile_discard", icon=":material/undo:"):
            state.edited_dockerfile = state.edited_from = None
            st.session_state["dockerfile_edit"] = generated
            st.rerun()


def render_page() -> None:
    state = wizard()
    st.title(t("plan.title"))
    if state.model is None or state.target is None:
        st.info(t("plan.needs_model_and_target"), icon=":material/info:")
        if state.model is None:
            st.page_link(PAGE_MODEL, label=t("common.back_to_model"), icon=":material/arrow_back:")
        if state.target is None:
            st.page_link(PAGE_HARDWARE, label=t("common.back_to_hardware"), icon=":material/arrow_back:")
        return
    st.caption(t("plan.for", model=state.model.repo_id, target=fmt_target(state.target)))
    _options_form(state)
    show_notices(state)
    try:
        the_plan = state.current_plan()
    except EzRunnerError as error:
        show_error(error)
        return
    if the_plan is None:
        return
    _summary(the_plan)
    chart, reasons = st.columns(2, gap="large")
    with chart:
        st.subheader(t("plan.memory"))
        _memory_chart(the_plan)
    with reasons:
        _reasons(the_plan)
    _warnings(the_plan)
    _alternatives(the_plan)

    try:
        spec = render(plan=the_plan)
    except EzRunnerError as error:
        show_error(error)
        return
    st.subheader(t("plan.dockerfile"))
    _dockerfile(spec.dockerfile)
    st.download_button(
        t("plan.download_context"),
        data=_context_zip(the_plan=the_plan, spec=spec),
        file_name=f"{spec.image_tag.split('/')[-1].replace(':', '-')}-context.zip",
        mime="application/zip",
        key="download_context",
        icon=":material/folder_zip:",
        on_click="ignore",
    )
    st.subheader(t("plan.run_command"))
    st.caption(t("plan.run_command_help"))
    st.code(spec.run_command(), language="bash")
    if st.button(t("plan.next"), key="to_build", type="primary", icon=":material/arrow_forward:"):
        st.switch_page(PAGE_BUILD)


render_page()
