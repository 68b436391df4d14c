"""The engine options the CLI has (``--engine``, ``--quant``, ``--kv-cache-type``, ``--parallel``) as widgets.

Both the Hardware page and the Plan page's advanced options draw them (with their own widget keys); the
values live in ``WizardState.options``. The quantizations offered are core's candidates for the chosen
model (a GGUF repo's variants, or what a conversion can make), never a list kept here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import streamlit as st

from core.engines import engine_names
from core.engines.llamacpp import candidates
from core.errors import EzRunnerError
from core.planning import Options
from core.wizard_state import ENGINE_OPTION_FIELDS, KV_CACHE_TYPES, change_options
from ezrunner_ui.i18n import option_labels, t
from ezrunner_ui.state import WizardState, seed

ENGINES: tuple[str, ...] = ("auto", *engine_names())
PLAN_PREFIX = "opt"
HARDWARE_PREFIX = "hw_opt"
#: the Plan page's other option widgets: widget key → Options field
PLAN_WIDGETS: dict[str, str] = {
    "opt_tp": "tensor_parallel_size",
    "opt_dp": "data_parallel_size",
    "opt_nodes": "nodes",
    "opt_max_len": "max_model_len",
    "opt_gpu_util": "gpu_memory_utilization",
    "opt_dtype": "dtype",
    "opt_port": "port",
    "opt_base_image": "base_image",
}


def forget_option_widgets(names: Sequence[str] | None = None) -> None:
    """Drop the values of the widgets of the Options fields ``names`` (all when None), so that each re-seeds
    from ``state.options`` (after a fix, a reset, or a change that reset options behind the widgets' back)."""
    widgets = {**PLAN_WIDGETS, **widget_keys(PLAN_PREFIX), **widget_keys(HARDWARE_PREFIX)}
    for key, name in widgets.items():
        if names is None or name in names:
            st.session_state.pop(key, None)


def quant_choices(state: WizardState) -> tuple[str | None, ...]:
    """None (automatic), then the quantizations core could pack for the chosen model."""
    names: list[str] = []
    if state.model is not None:
        try:
            names = [candidate.quant for candidate in candidates(state.model)]
        except EzRunnerError:
            names = []  # a model llama.cpp cannot take: only "automatic"
    if state.options.quant and state.options.quant not in names:
        names.append(state.options.quant)
    return (None, *dict.fromkeys(names))


def widget_keys(prefix: str) -> dict[str, str]:
    """Widget key → Options field for the engine options drawn with ``prefix``."""
    return {f"{prefix}_{name}": name for name in ENGINE_OPTION_FIELDS}


def engine_options_form(state: WizardState, *, prefix: str) -> None:
    """Draw the four engine options in a row and write them back into ``state.options`` (with the reset
    notices)."""
    keys = widget_keys(prefix)
    for key, name in keys.items():
        seed(key, getattr(state.options, name))
    engine_slot, quant_slot, cache_slot, parallel_slot = st.columns(4)
    engines = {e: t(f"engine.{e}") for e in ENGINES}
    engine_slot.selectbox(
        t("plan.engine"), options=ENGINES, format_func=engines.__getitem__, key=f"{prefix}_engine"
    )
    quants = quant_choices(state)
    if st.session_state.get(f"{prefix}_quant") not in quants:
        st.session_state[f"{prefix}_quant"] = None  # a quantization of another model: back to automatic
    quant_slot.selectbox(
        t("plan.quant"),
        options=quants,
        format_func=lambda q: q or t("plan.auto"),
        key=f"{prefix}_quant",
        help=t("plan.quant_help"),
    )
    cache_types = (None, *KV_CACHE_TYPES)
    cache_slot.selectbox(
        t("plan.kv_cache_type"),
        options=cache_types,
        format_func=lambda c: c or t("plan.auto"),
        key=f"{prefix}_kv_cache_type",
        help=t("plan.kv_cache_type_help"),
    )
    parallel_slot.number_input(
        t("plan.parallel"),
        key=f"{prefix}_parallel",
        value=None,
        min_value=1,
        max_value=256,
        step=1,
        placeholder=t("plan.auto"),
        help=t("plan.parallel_help"),
    )
    values = {name: st.session_state[key] for key, name in keys.items()}
    if values["parallel"] is not None:
        values["parallel"] = int(values["parallel"])
    apply_options(state, replace(state.options, **values))


def apply_options(state: WizardState, new: Options, *, from_callback: bool = False) -> None:
    """Take new options; what an engine change made stale (base image, llama.cpp options) is reset, with a
    notice naming it.

    Widgets drawn in this run still hold the stale values, and a widget's value cannot be changed once it is
    drawn: a reset from the page body reruns the script, and the next run drops those widgets' values before
    drawing them (``drop_stale_widgets``). From a callback (before any widget is drawn) it drops them now.
    """
    result = change_options(old=state.options, new=new)
    state.options = result.options
    if not result.reset:
        return
    state.notices.append(("options_reset_engine", ", ".join(result.reset)))
    if from_callback:
        forget_option_widgets(result.reset)
        return
    state.stale_widgets = tuple(result.reset)
    st.rerun()


def drop_stale_widgets(state: WizardState) -> None:
    """At the top of a run: forget the widgets whose options the last run reset (see ``apply_options``)."""
    if state.stale_widgets:
        forget_option_widgets(state.stale_widgets)
        state.stale_widgets = ()


def show_notices(state: WizardState) -> None:
    """One-shot notices (options reset by a model or engine change, a restored tab), shown once where they
    arose (pages call this after a change) or at the top of the next run."""
    for key, detail in state.notices:
        st.info(t(f"notice.{key}", fields=option_labels(detail), detail=detail), icon=":material/info:")
    state.notices.clear()
