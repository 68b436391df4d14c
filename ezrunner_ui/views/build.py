"""Step 4: pack the plan into one archive (download → build → export), with live progress and cancel.

The pack runs as a ``core.jobs`` job, outside any script run; this page only starts it and polls
its snapshot once a second from a fragment while it runs. The job id is in the URL (``?job=``), so a
refresh or a second tab re-attaches instead of starting a second build.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import streamlit as st

from core import render as rendering
from core.docker import api as docker_api
from core.errors import EzRunnerError
from core.events import Cancel, EventSink
from core.hardware import default_data_dir
from core.history import History
from core.jobs import REGISTRY, Job, JobSnapshot, StageProgress
from core.offline_images import BaseImageStatus, base_image_status
from core.pack import pack
from core.plan import Plan
from core.wizard_state import monotonic_fraction
from ezrunner_ui.app_options import forget_option_widgets
from ezrunner_ui.i18n import fmt_bytes, fmt_duration, fmt_rate, fmt_target, has, t
from ezrunner_ui.state import (
    PAGE_DOWNLOAD,
    PAGE_PLAN,
    WizardState,
    attached_job,
    edited_dockerfile,
    plan_key,
    put_job_in_url,
    seed,
    wizard,
)
from ezrunner_ui.ui_errors import docker_problem, show_error, show_error_message

GIB = 1 << 30
# FAT32 holds files of at most 4 GiB - 1 byte; parts are N GiB - 1 MiB so that "4" fits such a stick.
PART_SLACK_BYTES = 1 << 20
LIVE_LOG_LINES = 12
STAGE_ORDER = ("check", "pull", "download", "verify", "stage", "build", "export", "load", "run", "done")


def base_image_check(the_plan: Plan) -> BaseImageStatus | None:
    """Whether the plan's base image is here (and which offline image could stand in); None without Docker."""
    try:
        client = docker_api.connect(timeout=10)
    except EzRunnerError:
        return None
    try:
        return base_image_status(plan=the_plan, client=client)
    except EzRunnerError:
        return None
    finally:
        client.close()


def _use_base_image(ref: str) -> None:
    state = wizard()
    state.options = replace(state.options, base_image=ref)
    forget_option_widgets(("base_image",))


def _base_image(the_plan: Plan) -> bool:
    """Say when the base image is missing, offer the local offline image; True when the build can start."""
    status = base_image_check(the_plan)
    if status is None or status.present:
        return True
    st.warning(t("build.base_missing", image=status.image), icon=":material/cloud_off:")
    if status.offline_helps and status.offline is not None:
        st.button(
            t("build.use_offline", image=status.offline.ref),
            key="use_offline_image",
            type="primary",
            icon=":material/inventory_2:",
            on_click=_use_base_image,
            args=(status.offline.ref,),
        )
        st.caption(t("build.offline_why"))
    else:
        st.info(t("build.base_how", image=status.image), icon=":material/help:")
    return False


def _confirm_unfit(the_plan: Plan) -> bool:
    """A plan that does not fit builds only after an explicit confirmation; True when it may build."""
    if the_plan.fits:
        return True
    st.error(t("build.unfit"), icon=":material/block:")
    st.page_link(PAGE_PLAN, label=t("build.unfit_fix"), icon=":material/arrow_back:")
    return bool(st.checkbox(t("build.unfit_confirm"), key="confirm_unfit", value=False))


def archive_name(the_plan: Plan) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", the_plan.model.name.lower()).strip("._-") or "model"
    return f"{slug}-{the_plan.model.commit[:12]}-{the_plan.engine}.tar"


def _start(the_plan: Plan, output: Path, compress: bool, split_bytes: int | None) -> None:
    state = wizard()
    token = state.token  # captured by the job only; never stored with it or logged
    dockerfile = edited_dockerfile(state, generated=rendering.render(plan=the_plan).dockerfile)
    history = History()

    def work(on_event: EventSink, cancel: Cancel) -> object:
        return pack(
            plan=the_plan,
            dockerfile=dockerfile,
            output=output,
            compression="zstd" if compress else "none",
            split_bytes=split_bytes,
            token=token,
            history=history,
            overwrite=True,  # as before: the wizard names archives by model, commit and engine, so a re-pack replaces
            on_event=on_event,
            cancel=cancel,
        )

    job = REGISTRY.start(key=plan_key(the_plan), work=work)
    state.job_id = job.id
    state.record_id = None
    put_job_in_url(job.id)


def _output_options(state: WizardState) -> tuple[Path, bool, int | None]:
    seed("out_dir", state.output_dir or str(default_data_dir() / "exports"))
    seed("out_zstd", state.compress)
    seed("out_split", state.split)
    seed("out_split_gib", state.split_gib)
    st.text_input(t("build.output_dir"), key="out_dir", help=t("build.output_dir_help"))
    left, right = st.columns(2)
    left.checkbox(t("build.compress"), key="out_zstd", help=t("build.compress_help"))
    right.checkbox(t("build.split"), key="out_split", help=t("build.split_help"))
    split = bool(st.session_state["out_split"])
    right.number_input(
        t("build.split_gib"),
        key="out_split_gib",
        min_value=0.1,
        max_value=1024.0,
        step=0.5,
        disabled=not split,
    )
    state.output_dir = str(st.session_state["out_dir"]).strip()
    state.compress = bool(st.session_state["out_zstd"])
    state.split = split
    state.split_gib = float(st.session_state["out_split_gib"])
    split_bytes = int(state.split_gib * GIB) - PART_SLACK_BYTES if split else None
    return Path(state.output_dir).expanduser(), state.compress, split_bytes


def _stage_line(progress: StageProgress) -> str:
    if progress.unit == "B":
        parts = [
            t("build.bytes_of", done=fmt_bytes(progress.done), total=fmt_bytes(progress.total))
            if progress.total
            else fmt_bytes(progress.done),
            fmt_rate(progress.rate),
            t("build.eta", eta=fmt_duration(progress.eta_s)),
        ]
        if progress.file:
            parts.append(progress.file)
        return " · ".join(parts)
    if progress.unit == "step" and progress.total:
        return t("build.step_of", n=progress.done, total=progress.total)
    if progress.total:
        return f"{progress.done} / {progress.total} {progress.unit}".strip()
    return progress.message


def _stage_rows(snapshot: JobSnapshot) -> None:
    stages = sorted(snapshot.stages, key=lambda s: STAGE_ORDER.index(s.stage) if s.stage in STAGE_ORDER else 99)
    for progress in stages:
        if progress.stage != snapshot.stage or snapshot.state == "succeeded":
            icon = "✓"
        else:
            icon = "…" if snapshot.active else "✗"
        name = t(f"stage.{progress.stage}") if progress.stage in STAGE_ORDER else progress.stage
        line = _stage_line(progress)
        if progress.fraction is not None and progress.stage in ("pull", "download", "convert", "build", "export"):
            seen = st.session_state.setdefault("progress_seen", {})
            fraction = monotonic_fraction(seen=seen, key=f"{snapshot.id}:{progress.stage}", fraction=progress.fraction)
            st.progress(fraction, text=f"{icon} **{name}** — {line}")
        else:
            st.markdown(f"{icon} **{name}** — {line}" if line else f"{icon} **{name}**")
        if progress.message and progress.message != line and progress.unit in ("B", "step"):
            st.caption(progress.message)


def _outcome(snapshot: JobSnapshot) -> None:
    if snapshot.state == "succeeded":
        result = snapshot.result
        sha256 = getattr(result, "sha256", None)
        st.success(t("build.succeeded", duration=fmt_duration((snapshot.finished or 0) - snapshot.started)))
        if getattr(result, "export_reason", None):
            st.caption(t(f"build.export_{result.export_path.replace('-', '_')}"))
        if sha256:
            st.markdown(t("build.sha256"))
            st.code(sha256, language=None)
        if getattr(result, "record_id", None) and st.button(
            t("build.to_download"), key="to_download", type="primary", icon=":material/download:"
        ):
            st.switch_page(PAGE_DOWNLOAD, query_params={"record": result.record_id})
    elif snapshot.state == "cancelled":
        st.info(t("build.cancelled"), icon=":material/cancel:")
    elif snapshot.state == "failed":
        show_error_message(code=snapshot.error_code, message=snapshot.error or "")
        hint = f"build.hint_{snapshot.error_code}"
        if has(hint):
            st.info(t(hint), icon=":material/help:")


def _progress_panel(job: Job) -> None:
    was_active = job.snapshot().active

    @st.fragment(run_every=1.0 if was_active else None)
    def panel() -> None:
        snapshot = job.snapshot()
        if was_active and not snapshot.active:
            st.rerun()  # the whole page: the Start button, the step indicator and the record
        with st.container(border=True, key="job_panel"):
            head, cancel = st.columns([4, 1])
            head.markdown(
                t(
                    "build.job_line",
                    state=t(f"job_state.{snapshot.state}"),
                    id=snapshot.id[:8],
                    elapsed=fmt_duration((snapshot.finished or time.time()) - snapshot.started),
                )
            )
            cancel.button(
                t("build.cancel"),
                key="cancel_button",
                on_click=job.cancel,
                disabled=not snapshot.active,
                icon=":material/stop_circle:",
            )
            _stage_rows(snapshot)
            if snapshot.log_tail:
                # the last lines, live (a scrolling box would show its top, i.e. the oldest lines); all on demand
                st.caption(t("build.log"))
                st.code("\n".join(snapshot.log_tail[-LIVE_LOG_LINES:]), language=None, wrap_lines=True)
                if len(snapshot.log_tail) > LIVE_LOG_LINES:
                    with st.expander(t("build.full_log", count=len(snapshot.log_tail))):
                        st.code("\n".join(snapshot.log_tail), language=None, wrap_lines=True)
            _outcome(snapshot)

    panel()


def render() -> None:
    state = wizard()
    st.title(t("build.title"))
    job = attached_job(state)
    try:
        the_plan = state.current_plan()
    except EzRunnerError as error:
        show_error(error)
        the_plan = None

    if the_plan is None and job is None:
        st.info(t("build.needs_plan"), icon=":material/info:")
        st.page_link(PAGE_PLAN, label=t("common.back_to_plan"), icon=":material/arrow_back:")
        return

    if the_plan is not None:
        # a job for the same model and plan started elsewhere (another tab): follow it
        running = next((j for j in REGISTRY.all() if j.key == plan_key(the_plan) and j.snapshot().active), None)
        if running is not None and (job is None or job.id != running.id):
            state.job_id = running.id
            put_job_in_url(running.id)
            job = running
        st.caption(
            t(
                "build.what",
                model=the_plan.model.repo_id,
                target=fmt_target(the_plan.target),
                engine=t(f"engine.{the_plan.engine}"),
            )
        )
        problem = docker_problem()
        if problem is not None:
            show_error(problem)
            st.info(t("build.docker_how"), icon=":material/help:")
        busy = job is not None and job.snapshot().active
        may_build = problem is None and _base_image(the_plan)
        may_build = _confirm_unfit(the_plan) and may_build
        with st.container(border=True):
            st.subheader(t("build.output"))
            output_dir, compress, split_bytes = _output_options(state)
            output = output_dir / archive_name(the_plan)
            st.caption(t("build.output_file", path=str(output)))
            st.button(
                t("build.running") if busy else t("build.start"),
                key="start_build",
                type="primary",
                icon=":material/play_arrow:",
                disabled=busy or not may_build,
                on_click=_start,
                args=(the_plan, output, compress, split_bytes),
            )

    if job is not None:
        snapshot = job.snapshot()
        if snapshot.state == "succeeded" and getattr(snapshot.result, "record_id", None):
            state.record_id = snapshot.result.record_id
        _progress_panel(job)


render()
