"""Every pack made on this machine: what, for which target, how it went; download, re-plan or delete it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import streamlit as st

from core import hubs
from core.errors import EzRunnerError, ModelNotFoundError
from core.hardware import Gpu, Target
from core.history import History, PackRecord
from core.plan import Options
from core.refs import parse_ref
from ezrunner_ui.app_options import forget_option_widgets
from ezrunner_ui.i18n import fmt_bytes, fmt_duration, t
from ezrunner_ui.state import PAGE_DOWNLOAD, PAGE_PLAN, PAGE_TRY, wizard
from ezrunner_ui.ui_errors import show_error

# Material icons, not emoji: offline Linux desktops often lack an emoji font
OUTCOME_ICONS = {
    "succeeded": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
    "running": ":material/pending:",
}


def target_from_summary(summary: Mapping[str, Any]) -> Target:
    """Rebuild a Target from ``core.hardware.target_summary`` output, as stored in a pack record."""
    gpus = tuple(
        Gpu(
            name=str(gpu["name"]),
            memory_bytes=int(gpu["memory_bytes"]),
            compute_capability=tuple(int(x) for x in str(gpu["compute_capability"]).split(".")),  # type: ignore[arg-type]
            index=gpu.get("index"),
        )
        for gpu in summary.get("gpus", [])
    )
    return Target(
        gpus=gpus,
        driver_version=summary.get("driver_version"),
        cuda_version=summary.get("cuda_version"),
        cpu_cores=summary.get("cpu_cores"),
        ram_bytes=summary.get("ram_bytes"),
        free_disk_bytes=summary.get("free_disk_bytes"),
        origin="detected" if summary.get("origin") == "detected" else "described",
        label=str(summary.get("label") or ""),
        notes=tuple(summary.get("notes") or ()),
    )


def options_from_plan(plan_dict: Mapping[str, Any]) -> Options:
    """The options that give the recorded plan again.

    A record made with the options stored restores them as they were ("auto" stays "auto"); one that
    has only the plan's choices forces those choices, which re-plans to the same plan.
    """
    known = {f.name for f in fields(Options)}
    stored = plan_dict.get("options")
    if isinstance(stored, Mapping):
        return Options(**{k: v for k, v in stored.items() if k in known})
    chosen = ("engine", "tensor_parallel_size", "max_model_len", "dtype", "gpu_memory_utilization")
    return Options(**{k: plan_dict[k] for k in chosen if plan_dict.get(k) is not None})


def model_text(record: PackRecord) -> str:
    """What to inspect again: the hub id, or for a local folder the path the plan kept."""
    if record.source in ("hf", "ms"):
        return f"{record.source}:{record.model_id}"
    model = record.plan.get("model")
    path = model.get("path") if isinstance(model, Mapping) else None
    if not path:
        raise ModelNotFoundError(
            f"The pack record of {record.model_id} does not say which folder it came from.",
            hint="Pick the folder again on the Model page.",
        )
    return str(path)


def _open_plan(record: PackRecord) -> None:
    state = wizard()
    try:
        text = model_text(record)
        revision = record.model_commit if record.source in ("hf", "ms") else ""
        with st.spinner(t("model.inspecting", ref=text)):
            info = hubs.inspect(ref=parse_ref(text), revision=revision or None, token=state.token)
    except EzRunnerError as error:
        show_error(error)
        return
    if info.commit != record.model_commit:
        st.warning(t("history.model_changed", old=record.model_commit[:12], new=info.commit[:12]))
    state.set_model(info, text=text)
    state.revision = revision
    state.target = target_from_summary(record.target)
    state.options = options_from_plan(record.plan)
    state.notices.clear()  # set_model's "options reset" notice: the record's own options replace them
    forget_option_widgets()  # every option widget re-seeds from the restored options
    st.switch_page(PAGE_PLAN)


def _delete(record_id: str) -> None:
    History().delete(record_id, files=True)
    state = wizard()
    state.confirm_delete = None
    if state.record_id == record_id:
        state.record_id = None


def _ask_delete(record_id: str | None) -> None:
    wizard().confirm_delete = record_id


def _bench(results: list[dict[str, Any]]) -> None:
    """The ``ezrunner bench`` runs kept with this pack: when, load, TTFT, tokens/s, requests, memory."""
    rows = [
        {
            t("history.bench_when"): dt.datetime.fromtimestamp(float(r["recorded"])).strftime("%Y-%m-%d %H:%M"),
            t("history.bench_load"):
                f"{r.get('requests', '—')} × {r.get('max_tokens', '—')} ({r.get('concurrency', 1)})",
            t("history.bench_ttft"): f"{r['ttft_s_p50']:.2f} / {r['ttft_s_p95']:.2f} s"
            if r.get("ttft_s_p50") is not None and r.get("ttft_s_p95") is not None else "—",
            t("history.bench_tokens"): f"{r.get('output_tokens_per_s') or 0:.1f}",
            t("history.bench_requests"): f"{r.get('requests_ok', 0)} / {r.get('requests_failed', 0)}",
            t("history.bench_memory"): fmt_bytes(r.get("peak_memory_bytes")),
        }
        for r in results
    ]  # fmt: skip
    with st.expander(t("history.bench", count=len(rows)), icon=":material/speed:"):
        st.dataframe(rows, hide_index=True, width="stretch")


def _record(record: PackRecord, bench: list[dict[str, Any]] | None = None) -> None:
    state = wizard()
    started = dt.datetime.fromtimestamp(record.started).strftime("%Y-%m-%d %H:%M")
    icon = OUTCOME_ICONS.get(record.outcome, ":material/help:")
    title = f"{icon} {record.model_id} · {record.model_commit[:12]} · {started}"
    with st.container(border=True, key=f"record_{record.id}"):
        st.markdown(f"#### {title}")
        engine = record.plan.get("engine", "—")
        st.markdown(
            t(
                "history.summary",
                outcome=t(f"job_state.{record.outcome}"),
                target=record.target.get("label", "—"),
                engine=engine,
                tp=record.plan.get("tensor_parallel_size", "—"),
                length=record.plan.get("max_model_len", "—"),
            )
        )
        size, took, image = st.columns(3)
        size.metric(t("history.size"), fmt_bytes(record.size))
        took.metric(t("history.duration"), fmt_duration(record.duration_s))
        image.metric(t("history.image_id"), (record.image_id or "—").removeprefix("sha256:")[:12])
        st.caption(
            t(
                "history.details",
                tag=record.image_tag or "—",
                archive=record.archive or "—",
                sha256=record.sha256 or "—",
            )
        )
        if record.error:
            st.error(record.error)
        with st.expander(t("history.dockerfile"), icon=":material/description:"):
            st.code(record.dockerfile, language="dockerfile")
        if record.log:
            with st.expander(t("history.log"), icon=":material/receipt_long:"):
                st.code(record.log[-20000:], language=None, height=400)
        if bench:
            _bench(bench)

        download, drive, replan, delete = st.columns(4)
        if record.outcome == "succeeded" and download.button(
            t("history.download"), key=f"download_{record.id}", icon=":material/download:"
        ):
            state.record_id = record.id
            st.switch_page(PAGE_DOWNLOAD, query_params={"record": record.id})
        if record.outcome == "succeeded" and drive.button(
            t("history.try"), key=f"try_{record.id}", icon=":material/chat:"
        ):
            state.record_id = record.id
            st.switch_page(PAGE_TRY, query_params={"record": record.id})
        if replan.button(t("history.open_plan"), key=f"replan_{record.id}", icon=":material/tune:"):
            _open_plan(record)
        if state.confirm_delete != record.id:
            delete.button(
                t("history.delete"),
                key=f"delete_{record.id}",
                icon=":material/delete:",
                on_click=_ask_delete,
                args=(record.id,),
            )
        else:
            st.warning(t("history.confirm_delete", archive=record.archive or record.model_id))
            yes, no = st.columns(2)
            yes.button(
                t("history.confirm_yes"),
                key=f"confirm_delete_{record.id}",
                type="primary",
                on_click=_delete,
                args=(record.id,),
            )
            no.button(t("history.confirm_no"), key=f"cancel_delete_{record.id}", on_click=_ask_delete, args=(None,))


def render() -> None:
    st.title(t("history.title"))
    history = History()
    records = history.list()
    if not records:
        st.info(t("history.empty"), icon=":material/info:")
        return
    st.caption(t("history.count", count=len(records)))
    for record in records:
        _record(record, history.bench_results(record.id))


render()
