"""Step 6: drive what was packed before it leaves this machine: start it, chat with it, compare two, bench them.

The servers live in ``core.tryout.SERVERS`` (one per pack, shared by every tab); a chat or a comparison runs
in a thread of ``core.tryout`` and this page repaints its text as the tokens arrive; a bench is a job of
``core.jobs`` that a fragment polls, its figures stored with the pack's record (History shows them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import altair as alt
import streamlit as st

from core.bench import BenchResult, bench
from core.errors import EzRunnerError
from core.events import Cancel, EventSink
from core.hardware import free_memory
from core.history import History, PackRecord
from core.jobs import REGISTRY, Job
from core.tryout import (
    SERVERS,
    ChatFigures,
    ChatRun,
    ChatSnapshot,
    Comparison,
    Side,
    fit_side_by_side,
    memory_need,
    network_for,
    target_of,
    turns_to_send,
)
from ezrunner_ui.i18n import fmt_bytes, fmt_duration, t
from ezrunner_ui.state import PAGE_BUILD, PAGE_HISTORY, WizardState, record_from_url, save_tab, seed, wizard
from ezrunner_ui.ui_errors import docker_problem, show_error, show_error_message

REPAINT_S = 0.05  # how often a streaming answer is redrawn: fast enough to look live, cheap on the socket
HEARTBEAT_S = 0.5  # how often a start's or a bench's progress is redrawn
MAX_TOKENS_CAP = 4096
BENCH_STAGE = "bench"  # the core.events stage of the requests, after load and start


def _label(record: PackRecord) -> str:
    engine = record.plan.get("engine", "—")
    return f"{record.model_id} · {engine} · {record.model_commit[:12]} · {fmt_bytes(record.size)}"


def _figures_text(figures: dict[str, Any] | None) -> str:
    if not figures:
        return ""
    ttft = figures.get("ttft_s")
    rate = figures.get("tokens_per_s")
    return t(
        "try.figures",
        ttft=f"{ttft:.2f}" if ttft is not None else "—",
        tokens=figures.get("output_tokens", 0),
        rate=f"{rate:.1f}" if rate is not None else "—",
        duration=f"{figures.get('duration_s', 0):.1f}",
    )


def _pick(state: WizardState, records: Sequence[PackRecord], *, key: str, current: str | None,
          exclude: str | None = None) -> PackRecord:  # fmt: skip
    options = [r.id for r in records if r.id != exclude]
    if current not in options:
        current = options[0]
    seed(key, current)
    if st.session_state[key] not in options:
        st.session_state[key] = current
    chosen = st.selectbox(t("try.pack"), options=options, key=key,
                          format_func=lambda rid: next(_label(r) for r in records if r.id == rid))  # fmt: skip
    return next(r for r in records if r.id == chosen)


# ONE SERVER


def _start(record: PackRecord) -> None:
    SERVERS.start(record=record)


def _stop(record_id: str) -> None:
    state = wizard()
    if state.try_chat is not None and state.try_chat_record == record_id:
        state.try_chat.cancel()
    if state.try_comparison is not None:
        state.try_comparison.cancel()
    SERVERS.stop(record_id)


def _server_panel(record: PackRecord, *, slot: str) -> None:
    """Start / Stop and what the server is doing; while it starts, its progress is repainted until it is up."""
    status = SERVERS.status(record.id)
    with st.container(border=True, key=f"try_server_{slot}"):
        head, button = st.columns([3, 2], vertical_alignment="center")
        head.markdown(f"**{record.model_id}** · {t('engine.' + str(record.plan.get('engine', 'auto')))}")
        if status.state in ("running", "starting"):
            button.button(t("try.stop"), key=f"try_stop_{slot}", icon=":material/stop_circle:", on_click=_stop,
                          args=(record.id,))  # fmt: skip
        else:
            button.button(t("try.start"), key=f"try_start_{slot}", icon=":material/play_arrow:", type="primary",
                          on_click=_start, args=(record,))  # fmt: skip
        if status.state == "running" and status.server is not None:
            endpoint = status.server.endpoint or f"http://127.0.0.1:{status.server.port}/v1"
            st.success(t("try.running", endpoint=endpoint, name=status.server.served_model_name),
                       icon=":material/play_circle:")  # fmt: skip
            if status.server.api_key_one_off:
                st.caption(t("try.one_off_key", var=status.server.api_key_env or ""))
        elif status.state == "starting" and status.job is not None:
            _follow_start(status.job, st.empty())
        elif status.state == "failed" and status.job is not None:
            snapshot = status.job.snapshot()
            show_error_message(code=snapshot.error_code, message=snapshot.error or "")
            if snapshot.log_tail:
                with st.expander(t("try.start_log")):
                    st.code("\n".join(snapshot.log_tail[-40:]), language=None, wrap_lines=True)
        else:
            st.caption(t("try.stopped"))


def _follow_start(job: Job, slot: Any) -> None:
    """Repaint the start's progress until it ends, then rerun the page (Start/Stop, the chat box)."""

    def repaint() -> bool:
        snapshot = job.snapshot()
        stage = snapshot.progress(snapshot.stage) if snapshot.stage else None
        step = stage.message if stage is not None and stage.message else "…"
        slot.progress((stage.fraction if stage is not None else None) or 0.0, text=t("try.starting", step=step))
        return not snapshot.active

    _repaint_until(repaint, every_s=HEARTBEAT_S)
    st.rerun()


# CHAT


def _clear(record_id: str) -> None:
    wizard().try_messages.pop(record_id, None)


def _send(state: WizardState, record: PackRecord, prompt: str) -> None:
    server = SERVERS.server(record.id)
    if server is None:
        st.warning(t("try.not_running"), icon=":material/warning:")
        return
    conversation = state.try_messages.setdefault(record.id, [])
    history = turns_to_send(conversation, prompt)
    conversation.append({"role": "user", "content": prompt})
    state.try_chat = ChatRun(server=server, messages=history, max_tokens=state.try_max_tokens,
                             temperature=state.try_temperature).start()  # fmt: skip
    state.try_chat_record = record.id
    save_tab(state)  # before the answer streams: a refresh meanwhile follows it


def _repaint_until(done: Callable[[], bool], *, every_s: float = REPAINT_S) -> None:
    """Call ``done`` (which redraws) every ``every_s`` until it says the work is over.

    The page's live parts (a start, an answer, a bench) are this loop in the script run, not fragments on a
    timer: each redraw is also where Streamlit stops the run for a click (Stop), whose callback then runs.
    """
    while not done():
        time.sleep(every_s)


def _stream_answer(state: WizardState, record: PackRecord) -> None:
    run = state.try_chat
    if run is None or state.try_chat_record != record.id:
        return
    with st.chat_message("assistant"):
        answer = st.container(key="try_answer")
        text_slot = answer.empty()
        st.button(t("try.stop_answer"), key="try_stop_answer", icon=":material/stop:", on_click=run.cancel)
    shown: list[tuple[str, float]] = []

    def repaint() -> bool:
        snapshot = run.snapshot()
        now = time.monotonic()
        if not shown or snapshot.text != shown[-1][0] or now - shown[-1][1] > HEARTBEAT_S:
            text_slot.markdown(answer_text(snapshot.text, snapshot.figures, finished=snapshot.finished))
            shown.append((snapshot.text, now))
        return snapshot.finished

    _repaint_until(repaint)
    _keep_answer(state, record.id, run.snapshot())
    state.try_chat = None
    st.rerun()


def _keep_answer(state: WizardState, record_id: str, snapshot: ChatSnapshot) -> None:
    state.try_messages.setdefault(record_id, []).append({
        "role": "assistant",
        "content": snapshot.text,
        "figures": asdict(snapshot.figures) if snapshot.figures else None,
        "error": snapshot.error if snapshot.state == "failed" else None,
        "stopped": snapshot.state == "stopped",
    })  # fmt: skip


def _conversation(state: WizardState, record: PackRecord) -> None:
    for number, message in enumerate(state.try_messages.get(record.id, [])):
        with st.chat_message(message["role"]):
            with st.container(key=f"try_message_{number}"):
                st.markdown(answer_text(message["content"], message.get("figures"),
                                        finished=message["role"] == "assistant"))  # fmt: skip
            if message.get("error"):
                st.error(t("try.answer_failed", error=message["error"]), icon=":material/error:")
            elif message.get("stopped"):
                st.caption(t("try.answer_stopped"))
            figures = _figures_text(message.get("figures"))
            if figures:
                st.caption(figures)


def _answer_settings(state: WizardState, records: Sequence[PackRecord], *, compare: bool) -> None:
    """Longest answer (shared by both modes) and temperature (one per mode: a chat samples, a comparison is
    greedy unless asked otherwise)."""
    limit = min([int(r.plan.get("max_model_len") or MAX_TOKENS_CAP) for r in records] + [MAX_TOKENS_CAP])
    tokens_col, temperature_col = st.columns(2)
    seed("try_max_tokens", min(state.try_max_tokens, limit))
    state.try_max_tokens = int(tokens_col.number_input(t("try.max_tokens"), min_value=1, max_value=limit, step=16,
                                                       key="try_max_tokens"))  # fmt: skip
    field = "try_compare_temperature" if compare else "try_temperature"
    seed(field, float(getattr(state, field)))
    setattr(state, field, float(temperature_col.number_input(
        t("try.temperature"), min_value=0.0, max_value=2.0, step=0.1, format="%.1f", key=field,
        help=t("try.temperature_help"))))  # fmt: skip


def answer_text(text: str, figures: ChatFigures | dict[str, Any] | None, *, finished: bool) -> str:
    """What an answer shows: its text; "…" while it is still coming; once finished without visible text (a
    model that only produced special tokens), a line that says so rather than a "…" that looks unfinished."""
    if text:
        return text
    tokens = figures.get("output_tokens") if isinstance(figures, dict) else getattr(figures, "output_tokens", 0)
    if not finished or not tokens:  # still coming, or stopped/failed before a token (its caption says which)
        return "…"
    return f"*{t('try.no_text', tokens=tokens)}*"


def _chat(state: WizardState, records: Sequence[PackRecord]) -> list[PackRecord]:
    record = _pick(state, records, key="try_record", current=state.try_record or state.record_id)
    state.try_record = record.id
    _server_panel(record, slot="a")
    _answer_settings(state, [record], compare=False)
    if state.try_messages.get(record.id):
        st.button(t("try.clear"), key="try_clear", icon=":material/delete_sweep:", on_click=_clear,
                  args=(record.id,))  # fmt: skip
    _conversation(state, record)
    running = SERVERS.server(record.id) is not None
    prompt = st.chat_input(t("try.message") if running else t("try.start_first"), key="try_input",
                           disabled=not running or state.try_chat is not None)  # fmt: skip
    if prompt and prompt.strip():
        _send(state, record, prompt.strip())
        with st.chat_message("user"):
            st.markdown(prompt.strip())
    _stream_answer(state, record)
    return [record]


# COMPARE


def _compare(state: WizardState, records: Sequence[PackRecord]) -> list[PackRecord]:
    if len(records) < 2:
        st.info(t("try.compare_needs_two"), icon=":material/info:")
        return []
    left, right = st.columns(2)
    first_id, second_id = state.try_pair
    with left:
        first = _pick(state, records, key="try_pair_a", current=first_id or state.try_record)
    with right:
        second = _pick(state, records, key="try_pair_b", current=second_id, exclude=first.id)
    state.try_pair = (first.id, second.id)
    pair = [first, second]
    for column, record, slot in ((left, first, "a"), (right, second, "b")):
        with column:
            _server_panel(record, slot=slot)
    history = History()
    needs = [memory_need(record=r, bench_results=history.bench_results(r.id)) for r in pair]
    running = [n for r, n in zip(pair, needs, strict=True) if SERVERS.server(r.id) is not None]
    verdict = fit_side_by_side(needs=needs, free=free_memory(), running=running)
    where = t("try.measured") if verdict.measured else t("try.estimated")
    if len(running) == len(pair):
        st.success(t("try.both_running"), icon=":material/view_column:")
    elif verdict.side_by_side:
        st.success(t("try.side_by_side", need=fmt_bytes(verdict.ram_needed), free=fmt_bytes(verdict.ram_free),
                     where=where), icon=":material/view_column:")  # fmt: skip
    else:
        st.info(t("try.one_after_other", need=fmt_bytes(verdict.ram_needed), free=fmt_bytes(verdict.ram_free),
                  where=where), icon=":material/swap_horiz:")  # fmt: skip
    _answer_settings(state, pair, compare=True)
    seed("try_prompt", state.try_prompt)
    state.try_prompt = st.text_area(t("try.prompt"), key="try_prompt", height=100)
    comparison = state.try_comparison
    busy = comparison is not None and not comparison.snapshot().finished
    go, stop = st.columns([1, 1])
    if go.button(t("try.send_both"), key="try_send_both", type="primary", icon=":material/send:",
                 disabled=busy or not state.try_prompt.strip()):  # fmt: skip
        comparison = state.try_comparison = Comparison(
            records=pair, prompt=state.try_prompt.strip(), max_tokens=state.try_max_tokens,
            side_by_side=verdict.side_by_side, temperature=state.try_compare_temperature,
        ).start()  # fmt: skip
        save_tab(state)
    if comparison is not None:
        stop.button(t("try.stop_compare"), key="try_stop_compare", icon=":material/stop_circle:",
                    on_click=comparison.cancel)  # fmt: skip
        _stream_comparison(comparison, {r.id: r for r in pair})
    return pair


def _side_text(side: Side) -> str:
    if side.chat is not None:
        return answer_text(side.chat.text, side.chat.figures, finished=side.chat.finished)
    return ""


def _stream_comparison(comparison: Comparison, records: dict[str, PackRecord]) -> None:
    columns = st.columns(len(comparison.records))
    slots = []
    for number, (column, record) in enumerate(zip(columns, comparison.records, strict=True)):
        with column, st.container(border=True, key=f"try_side_{number}"):
            st.markdown(f"**{_label(records.get(record.id, record))}**")
            slots.append((st.empty(), st.empty(), st.empty()))
    shown: dict[int, tuple[str, str]] = {}

    def repaint() -> bool:
        snapshot = comparison.snapshot()
        for number, (side, (state_slot, text_slot, figures_slot)) in enumerate(zip(snapshot.sides, slots,
                                                                                   strict=True)):  # fmt: skip
            status = t(f"try.side_{side.state}", step=side.message or "…")
            text = _side_text(side)
            if shown.get(number) != (status, text):
                state_slot.caption(status)
                text_slot.markdown(text)
                shown[number] = (status, text)
            if side.chat is not None and side.chat.figures is not None:
                figures_slot.caption(_figures_text(asdict(side.chat.figures)))
            elif side.state == "failed" and side.message:
                figures_slot.error(side.message, icon=":material/error:")
            elif side.chat is not None and side.chat.error:
                figures_slot.error(side.chat.error, icon=":material/error:")
        return snapshot.finished

    was_running = not comparison.snapshot().finished
    _repaint_until(repaint)
    if was_running:
        st.rerun()  # the whole page again: the servers the comparison left running, Stop all


# BENCH


def _bench_work(records: Sequence[PackRecord], *, requests: int, concurrency: int,
                max_tokens: int) -> Callable[[EventSink, Cancel], tuple[BenchResult, ...]]:  # fmt: skip
    def work(on_event: EventSink, cancel: Cancel) -> tuple[BenchResult, ...]:
        for record in records:  # one target at a time, with all the memory: nothing of ours may hold it
            SERVERS.stop(record.id)
        targets = [target_of(record=r).text for r in records]
        return bench(targets=targets, requests_count=requests, concurrency=concurrency, max_tokens=max_tokens,
                     network=network_for(), history=History(), on_event=on_event, cancel=cancel,
                     pack_ids=[r.id for r in records])  # fmt: skip

    return work


def _count(column: Any, key: str, value: int, limit: int) -> int:
    """A whole-number input seeded from the wizard state, labelled by its catalog key."""
    seed(key, min(max(value, 1), limit))
    return int(column.number_input(t(key.replace("try_", "try.", 1)), min_value=1, max_value=limit, key=key))


def _bench_panel(state: WizardState, records: Sequence[PackRecord]) -> None:
    with st.container(border=True, key="try_bench"):
        st.subheader(t("try.bench_title"))
        st.caption(t("try.bench_what", count=len(records)))
        requests_col, concurrency_col, tokens_col = st.columns(3)
        state.try_bench_requests = _count(requests_col, "try_bench_requests", state.try_bench_requests, 10_000)
        state.try_bench_concurrency = _count(concurrency_col, "try_bench_concurrency", state.try_bench_concurrency, 256)
        state.try_bench_max_tokens = _count(tokens_col, "try_bench_max_tokens", state.try_bench_max_tokens,
                                            MAX_TOKENS_CAP)  # fmt: skip
        job = REGISTRY.get(state.try_bench_job)
        busy = job is not None and job.snapshot().active
        if st.button(t("try.bench_run"), key="try_bench_run", icon=":material/speed:", disabled=busy or not records):
            job = REGISTRY.start(
                key="bench:" + ",".join(r.id for r in records),
                work=_bench_work(records, requests=state.try_bench_requests, concurrency=state.try_bench_concurrency,
                                 max_tokens=state.try_bench_max_tokens),
            )  # fmt: skip
            state.try_bench_job = job.id
            save_tab(state)
        if job is not None:
            _bench_progress(job)


def _bench_progress(job: Job) -> None:
    snapshot = job.snapshot()
    if snapshot.active:
        st.button(t("try.bench_cancel"), key="try_bench_cancel", icon=":material/stop_circle:", on_click=job.cancel)
        slot = st.empty()

        def repaint() -> bool:
            now = job.snapshot()
            progress = now.progress(BENCH_STAGE)
            line = progress.message if progress is not None else t("try.bench_starting")
            if now.stage and now.stage != BENCH_STAGE:
                stage = now.progress(now.stage)
                line = stage.message if stage is not None and stage.message else line
            fraction = progress.fraction if progress is not None and now.stage == BENCH_STAGE else None
            slot.progress(fraction or 0.0, text=t("try.bench_running", line=line,
                                                   elapsed=fmt_duration(time.time() - now.started)))  # fmt: skip
            return not now.active

        _repaint_until(repaint, every_s=HEARTBEAT_S)
        st.rerun()
    elif snapshot.state == "succeeded":
        with st.container(key="try_bench_results"):
            _bench_results(snapshot.result or ())
    elif snapshot.state == "cancelled":
        st.info(t("try.bench_cancelled"), icon=":material/cancel:")
    else:
        show_error_message(code=snapshot.error_code, message=snapshot.error or "")


def _bench_results(results: Sequence[BenchResult]) -> None:
    rows = [
        {
            t("try.col_target"): f"{number}. {r.target}",
            t("history.bench_ttft"): f"{r.ttft_s_p50:.3f} / {r.ttft_s_p95:.3f} s"
            if r.ttft_s_p50 is not None and r.ttft_s_p95 is not None else "—",
            t("history.bench_tokens"): f"{r.output_tokens_per_s:.1f}",
            t("try.col_decode"): f"{r.decode_tokens_per_s:.1f}" if r.decode_tokens_per_s else "—",
            t("history.bench_requests"): f"{r.requests_ok} / {r.requests_failed}",
            t("history.bench_memory"): fmt_bytes(r.peak_memory_bytes),
        }
        for number, r in enumerate(results, 1)
    ]  # fmt: skip
    st.dataframe(rows, hide_index=True, width="stretch")
    chart_rows = []
    for number, r in enumerate(results, 1):
        name = f"{number}. {r.target.rsplit('/', 1)[-1]}"  # numbered: two records may share one image
        for measure, value in ((t("try.chart_ttft_p50"), r.ttft_s_p50), (t("try.chart_ttft_p95"), r.ttft_s_p95)):
            if value is not None:
                chart_rows.append({"target": name, "measure": measure, "value": value, "chart": "ttft"})
        chart_rows.append({"target": name, "measure": t("history.bench_tokens"), "value": r.output_tokens_per_s,
                           "chart": "tps"})  # fmt: skip
    if chart_rows:
        ttft, tps = st.columns(2)
        for column, which, title in ((ttft, "ttft", t("try.chart_ttft")), (tps, "tps", t("try.chart_tps"))):
            data = alt.Data(values=[row for row in chart_rows if row["chart"] == which])
            chart = alt.Chart(data, title=title).mark_bar().encode(
                x=alt.X("target:N", title=None), xOffset="measure:N", y=alt.Y("value:Q", title=None),
                color=alt.Color("measure:N", title=None), tooltip=["target:N", "measure:N", "value:Q"],
            )  # fmt: skip
            column.altair_chart(chart, width="stretch")
    st.caption(t("try.bench_stored"))
    st.page_link(PAGE_HISTORY, label=t("try.to_history"), icon=":material/history:")


# THE PAGE


def _stop_everything() -> None:
    state = wizard()
    for run in (state.try_chat, state.try_comparison):
        if run is not None:
            run.cancel()
    job = REGISTRY.get(state.try_bench_job)
    if job is not None:
        job.cancel()
    SERVERS.stop_all()


def render() -> None:
    state = wizard()
    st.title(t("try.title"))
    st.caption(t("try.what"))
    problem = docker_problem()
    if problem is not None:
        show_error(problem)
        return
    records = [r for r in History().list() if r.outcome == "succeeded"]
    if not records:
        st.info(t("try.nothing"), icon=":material/info:")
        st.page_link(PAGE_BUILD, label=t("common.back_to_build"), icon=":material/arrow_back:")
        return
    wanted = record_from_url()
    if wanted and any(r.id == wanted for r in records) and state.try_record != wanted:
        state.try_record = wanted
        st.session_state.pop("try_record", None)  # the selectbox re-seeds from the record the link named
    try:
        for gone in SERVERS.check_alive():
            st.warning(t("try.server_gone", name=next((r.model_id for r in records if r.id == gone), gone)),
                       icon=":material/warning:")  # fmt: skip
    except EzRunnerError as error:
        show_error(error)
    running = SERVERS.running()
    if running:
        st.button(t("try.stop_all", count=len(running)), key="try_stop_all", icon=":material/power_settings_new:",
                  on_click=_stop_everything)  # fmt: skip
    seed("try_mode", state.try_mode)
    state.try_mode = str(st.segmented_control(
        t("try.mode"), options=["chat", "compare"], format_func=lambda m: t(f"try.mode_{m}"), key="try_mode",
    ) or "chat")  # fmt: skip
    try:
        chosen = _compare(state, records) if state.try_mode == "compare" else _chat(state, records)
        _bench_panel(state, chosen)
    except EzRunnerError as error:
        show_error(error)


render()
