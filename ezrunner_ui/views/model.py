"""Step 1: find a model (search a hub, type an id, or give a local folder) and see what will be packed."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core import hubs
from core.errors import EzRunnerError
from core.fit_check import FitCheck, check_fit, fits_only
from core.hardware import Target, target_label
from core.hubs.base import ModelInfo, ModelSummary, SearchFilters
from core.refs import parse_ref
from core.wizard_state import revision_for_lookup
from ezrunner_ui.app_options import show_notices
from ezrunner_ui.i18n import fmt_bytes, fmt_count, t
from ezrunner_ui.state import PAGE_HARDWARE, SearchRequest, WizardState, seed, wizard
from ezrunner_ui.ui_errors import show_error

SEARCH_LIMIT = 25
TASKS = ("text-generation", "image-text-to-text", "feature-extraction", "text2text-generation")
# Size filter stops in billions of parameters; the ends mean "no bound".
SIZE_STOPS = (0.0, 0.5, 1.0, 3.0, 8.0, 14.0, 35.0, 75.0, 150.0, 1000.0)
SOURCES = ("both", "hf", "ms")


@st.cache_data(ttl=600, max_entries=64, show_spinner=False)
def cached_search(request: SearchRequest) -> list[ModelSummary]:
    """Search results for 10 minutes. Searches never take a token, so none can be cached."""
    filters = SearchFilters(
        task=request.task,
        min_params=request.min_params,
        max_params=request.max_params,
        safetensors_only=request.safetensors_only,
    )
    return hubs.search(query=request.query, source=request.source, limit=SEARCH_LIMIT, filters=filters)  # type: ignore[arg-type]


@st.cache_data(ttl=600, max_entries=512, show_spinner=False)
def cached_fit(ref: str, target: Target) -> FitCheck:
    """The planner's verdict for one search result on the chosen target (header range reads), for 10 minutes.
    Public models only: a token is never part of a cache key, so gated ones stay "unknown" until picked."""
    return check_fit(ref=ref, target=target)


def _fit_badge(check: FitCheck | None) -> str:
    if check is None:
        return ""
    if check.verdict == "short_context":
        return t("model.fit_short", tokens=f"{check.max_model_len:,}")
    return t(f"model.fit_{check.verdict}")


def _check_fits(state: WizardState, results: list[ModelSummary]) -> dict[str, FitCheck]:
    """The verdicts known so far for these results, and a button that checks the others (with progress)."""
    target = state.target
    if target is None:
        st.caption(t("model.fit_needs_target"))
        return {}
    refs = [f"{r.source}:{r.id}" for r in results]
    checks: dict[tuple[str, str], FitCheck] = st.session_state.setdefault("fit_checks", {})
    key = target_label(target=target)
    known = {ref: checks[(ref, key)] for ref in refs if (ref, key) in checks}
    left = [ref for ref in refs if ref not in known]
    if left and st.button(t("model.fit_check", n=len(left), target=key), key="fit_check", icon=":material/memory:"):
        bar = st.progress(0.0, text=t("model.fit_checking", target=key))
        for done, ref in enumerate(left, start=1):
            known[ref] = checks[(ref, key)] = cached_fit(ref, target)
            bar.progress(done / len(left), text=t("model.fit_checking", target=key))
        bar.empty()
    return known


def _inspect(state: WizardState, *, text: str, revision: str) -> None:
    """Resolve ``text`` to a pinned ModelInfo and make it the wizard's model; errors are shown.

    Runs before the revision field is drawn (a callback, or the search table above it), so a revision that
    belonged to the previous model can be cleared from the field too.
    """
    revision, dropped = revision_for_lookup(
        text=text, typed=revision, previous_text=state.model_text, previous_revision=state.revision
    )
    if dropped:
        state.notices.append(("revision_reset", state.revision))
        st.session_state["model_revision"] = ""
    try:
        with st.spinner(t("model.inspecting", ref=text)):
            ref = parse_ref(text)
            info = hubs.inspect(ref=ref, revision=revision.strip() or None, token=state.token)
    except EzRunnerError as error:
        state.model = None
        if error.code == "gated_model":
            st.session_state["token_open"] = True
            state.retry_gated = None if state.token else text
        show_error(error)
        return
    state.retry_gated = None
    state.revision = revision.strip()
    state.set_model(info, text=text)


def _search_form(state: WizardState) -> None:
    # a form: pressing Enter in the query field submits it, as the Search button does
    with st.form("search_form", border=False, enter_to_submit=True):
        _search_fields(state)


def _search_fields(state: WizardState) -> None:
    query_column, source_column = st.columns([3, 2])
    query_column.text_input(
        t("model.search_label"),
        key="search_query",
        placeholder=t("model.search_placeholder"),
        persist_state="session",
    )
    source_column.segmented_control(
        t("model.source"),
        options=SOURCES,
        format_func={s: t(f"source.{s}") for s in SOURCES}.__getitem__,
        key="search_source",
        default="both",
        selection_mode="single",
        persist_state="session",
    )
    with st.expander(t("model.filters")):
        st.selectbox(
            t("model.task"),
            options=("", *TASKS),
            index=1,
            format_func={"": t("model.any_task"), **{task: task for task in TASKS}}.__getitem__,
            key="search_task",
            persist_state="session",
        )
        st.select_slider(
            t("model.size"),
            options=SIZE_STOPS,
            value=(SIZE_STOPS[0], SIZE_STOPS[-1]),
            format_func=lambda b: "∞" if b == SIZE_STOPS[-1] else f"{b:g} B",
            key="search_size",
            persist_state="session",
        )
        st.checkbox(t("model.safetensors_only"), value=True, key="search_safetensors", persist_state="session")
    if st.form_submit_button(t("model.search_button"), key="search_button", icon=":material/search:", type="primary"):
        low, high = st.session_state["search_size"]
        state.search = SearchRequest(
            query=st.session_state["search_query"].strip(),
            source=st.session_state["search_source"] or "both",
            task=st.session_state["search_task"] or None,
            min_params=None if low == SIZE_STOPS[0] else int(low * 1e9),
            max_params=None if high == SIZE_STOPS[-1] else int(high * 1e9),
            safetensors_only=bool(st.session_state["search_safetensors"]),
        )
        state.picked_result = None


def _results_table(state: WizardState) -> None:
    if state.search is None:
        return
    try:
        with st.spinner(t("model.searching")):
            results = cached_search(state.search)
    except EzRunnerError as error:
        show_error(error)
        return
    if not results:
        st.info(t("model.no_results"))
        return
    fits = _check_fits(state, results)
    # only results checked and found to fit: a result not checked yet is not known to fit
    if state.target is not None and st.checkbox(t("model.fits_only"), key="search_fits_only"):
        kept = set(fits_only(fits, [f"{r.source}:{r.id}" for r in results]))
        results = [r for r in results if f"{r.source}:{r.id}" in kept]
        if not results:
            st.info(t("model.no_fitting_results") if fits else t("model.fit_check_first"))
            return
    rows: list[dict[str, Any]] = [
        {
            t("model.col_fit"): _fit_badge(fits.get(f"{r.source}:{r.id}")),
            t("model.col_id"): r.id,
            t("model.col_source"): t(f"source.{r.source}"),
            t("model.col_params"): fmt_count(r.parameters),
            t("model.col_size"): fmt_bytes(r.size_bytes),
            t("model.col_downloads"): r.downloads,
            t("model.col_likes"): r.likes,
            t("model.col_updated"): r.updated.date() if r.updated else None,
            t("model.col_gated"): r.gated,
            t("model.col_license"): r.license or "",
        }
        for r in results
    ]
    st.caption(t("model.pick_hint"))
    event = st.dataframe(
        pd.DataFrame(rows),
        key="search_table",
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
    )
    selected = event.selection.rows if event is not None else []
    if not selected:
        return
    summary = results[selected[0]]
    ref_text = f"{summary.source}:{summary.id}"
    if summary.gated:
        st.session_state["token_open"] = True
    if ref_text != state.picked_result:
        state.picked_result = ref_text
        st.session_state["model_ref"] = ref_text
        _inspect(state, text=ref_text, revision=st.session_state.get("model_revision", ""))


def _lookup() -> None:
    state = wizard()
    _inspect(state, text=str(st.session_state["model_ref"]), revision=str(st.session_state["model_revision"]))


def _forget_token() -> None:
    wizard().token = None


def _take_token() -> None:
    # Move the token out of the widget at once: the field empties and the value is never drawn again.
    value = str(st.session_state.get("hf_token", "")).strip()
    st.session_state["hf_token"] = ""
    if value:
        wizard().token = value


def _token_field(state: WizardState) -> None:
    gated = bool(state.model and state.model.gated)
    with st.expander(t("model.token_title"), expanded=gated or bool(st.session_state.get("token_open"))):
        if state.token:
            st.success(t("model.token_set"), icon=":material/key:")
            st.button(t("model.token_forget"), key="forget_token", on_click=_forget_token)
        else:
            st.text_input(
                t("model.token_label"),
                key="hf_token",
                type="password",
                on_change=_take_token,
                help=t("model.token_help"),
                autocomplete="off",
            )


def _model_card(info: ModelInfo) -> None:
    with st.container(border=True, key="model_card"):
        st.subheader(info.repo_id)
        st.caption(t("model.answered_by", hub=info.answered_by))
        left, middle, right = st.columns(3)
        left.metric(t("model.parameters"), fmt_count(info.weights.total_parameters or None))
        middle.metric(t("model.size_on_disk"), fmt_bytes(info.total_bytes))
        right.metric(t("model.context_length"), f"{info.context_length:,}" if info.context_length else "—")
        st.markdown(t("model.revision_line", revision=info.revision, commit=info.commit))
        facts = [
            t("model.architecture_line", architecture=info.architecture or "—"),
            t("model.license", license=info.license or "—"),
        ]
        if info.gated:
            facts.append(t("model.gated"))
        if info.quantization:
            facts.append(t("model.quantized", method=info.quantization.get("quant_method", "?")))
        st.caption(" · ".join(facts))
        files = pd.DataFrame(
            [{t("model.col_file"): f.path, t("model.col_size"): fmt_bytes(f.size)} for f in info.files]
        )
        st.markdown(t("model.files_title", count=len(info.files), size=fmt_bytes(info.total_bytes)))
        st.dataframe(files, hide_index=True, width="stretch", height=min(35 * (len(info.files) + 1) + 3, 320))


def render() -> None:
    state = wizard()
    st.title(t("model.title"))
    st.write(t("model.intro"))

    search_tab, direct_tab = st.tabs([t("model.tab_search"), t("model.tab_direct")])
    with search_tab:
        _search_form(state)
        _results_table(state)
    with direct_tab:
        seed("model_ref", state.model_text)
        seed("model_revision", state.revision)
        ref_column, revision_column = st.columns([3, 1])
        ref_column.text_input(t("model.ref_label"), key="model_ref", help=t("model.ref_help"))
        revision_column.text_input(t("model.revision_label"), key="model_revision", help=t("model.revision_help"))
        st.button(t("model.inspect_button"), key="inspect_button", icon=":material/manage_search:", on_click=_lookup)

    show_notices(state)
    _token_field(state)
    if state.retry_gated and state.token:
        _inspect(state, text=state.retry_gated, revision=st.session_state.get("model_revision", ""))

    if state.model is not None:
        _model_card(state.model)
        if st.button(t("model.next"), key="to_hardware", type="primary", icon=":material/arrow_forward:"):
            st.switch_page(PAGE_HARDWARE)


render()
