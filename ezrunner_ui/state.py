"""The wizard's state: one ``WizardState`` per browser tab, plus what lives in the URL.

Pages read and write only this object (``wizard()``); widgets are seeded from it and copy their
values back, so a page switch (which deletes the values of widgets that were not drawn) loses
nothing. The URL carries the running job (``?job=<id>``) and a pack record (``?record=<id>``) so a
refresh or a second tab re-attaches; it never carries the access token.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from core.hardware import Target
from core.hubs.base import ModelInfo
from core.jobs import REGISTRY, Job
from core.plan import Options, Plan, plan
from core.tryout import LIVE, ChatRun, Comparison
from core.wizard_state import (
    SessionSnapshot,
    is_tab_id,
    load_session,
    new_tab_id,
    options_for_model,
    options_from_dict,
    options_to_dict,
    save_session,
    target_from_dict,
    target_to_dict,
)
from ezrunner_ui.i18n import DEFAULT_LANGUAGE, LANGUAGE_KEY, t

STATE_KEY = "wizard"
JOB_PARAM = "job"
RECORD_PARAM = "record"
TAB_PARAM = "tab"

# Page files, relative to app.py; st.switch_page and AppTest.switch_page take these paths.
PAGE_MODEL = "views/model.py"
PAGE_HARDWARE = "views/hardware.py"
PAGE_PLAN = "views/plan.py"
PAGE_BUILD = "views/build.py"
PAGE_DOWNLOAD = "views/download.py"
PAGE_HISTORY = "views/history.py"
PAGE_TRY = "views/try_drive.py"


@dataclass
class SearchRequest:
    query: str
    source: str  # "hf" | "ms" | "both"
    task: str | None
    min_params: int | None
    max_params: int | None
    safetensors_only: bool


@dataclass
class WizardState:
    """Everything the wizard knows for one tab. Mutable on purpose: pages update it in place."""

    # step 1: model
    model_text: str = ""  # what was inspected: "hf:org/name", "ms:org/name", "org/name" or a folder
    revision: str = ""  # empty: the hub's default branch
    model: ModelInfo | None = None
    search: SearchRequest | None = None
    picked_result: str | None = None  # "hf:org/name" of the selected search row, to inspect it only once
    retry_gated: str | None = None  # a gated model to inspect again as soon as a token is given
    # Session memory only: never in the URL, never written to disk or logs, never shown again.
    token: str | None = field(default=None, repr=False)
    # step 2: hardware
    target: Target | None = None
    detected: Target | None = None
    # step 3: plan
    options: Options = field(default_factory=Options)
    # A hand-edited Dockerfile and the generated text it was edited from: it applies only while the plan
    # still renders that same text (a changed plan makes the edit stale, and it is dropped).
    edited_dockerfile: str | None = None
    edited_from: str | None = None
    # step 4: build
    output_dir: str = ""
    compress: bool = False
    split: bool = False
    split_gib: float = 4.0
    job_id: str | None = None
    # step 5 / history
    record_id: str | None = None
    confirm_delete: str | None = None
    # step 6: try (the servers live in core.tryout.SERVERS, shared by every tab of this wizard)
    try_mode: str = "chat"  # "chat" | "compare"
    try_record: str | None = None
    try_pair: tuple[str | None, str | None] = (None, None)
    try_max_tokens: int = 128
    try_temperature: float = 0.7  # a chat samples as people use it
    try_compare_temperature: float = 0.0  # a comparison decodes greedily: the packs differ, not the dice
    try_prompt: str = ""
    # record id → its conversation: {"role", "content"}, answers also "figures" (ChatFigures as a dict), "error"
    try_messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    try_chat: ChatRun | None = None  # the answer in flight, for try_chat_record
    try_chat_record: str | None = None
    try_comparison: Comparison | None = None
    try_bench_job: str | None = None
    try_bench_requests: int = 8
    try_bench_concurrency: int = 1
    try_bench_max_tokens: int = 64
    # this tab's id (the URL's ?tab=, the name of its session file), which session of it this is (see
    # SessionSnapshot.generation), and one-shot notices for the next page
    tab_id: str | None = None
    tab_generation: int = 1
    # (catalog key under "notice.", detail) pairs shown once, then cleared
    notices: list[tuple[str, str]] = field(default_factory=list)
    # Options fields whose widgets must re-seed at the start of the next run (app_options.apply_options)
    stale_widgets: tuple[str, ...] = ()

    def set_model(self, model: ModelInfo, *, text: str) -> None:
        """A new model resets the options that belong to the old one (length, TP, base image, quantization),
        with a notice naming them; the target, port and engine stay."""
        if self.model is None or (self.model.repo_id, self.model.commit) != (model.repo_id, model.commit):
            change = options_for_model(options=self.options)
            self.options = change.options
            if change.reset and self.model is not None:
                self.notices.append(("options_reset_model", ", ".join(change.reset)))
            self.edited_dockerfile = self.edited_from = None
        self.model = model
        self.model_text = text

    def current_plan(self) -> Plan | None:
        """The plan for the chosen model, target and options (pure and fast, so computed on demand)."""
        if self.model is None or self.target is None:
            return None
        return plan(model=self.model, target=self.target, options=self.options)

    def __getstate__(self) -> dict[str, Any]:
        # if Streamlit ever pickles session state (enforceSerializableSessionState, or a session
        # store), the token must not travel with it
        values = dict(self.__dict__)
        values["token"] = None
        values["try_chat"] = values["try_comparison"] = None  # threads: not state to keep
        return values


def wizard() -> WizardState:
    """This tab's wizard state, created on first use."""
    state = st.session_state.get(STATE_KEY)
    if not isinstance(state, WizardState):
        state = WizardState()
        st.session_state[STATE_KEY] = state
    return state


def seed(key: str, value: Any) -> None:
    """Give a widget its value from the wizard state unless the widget already holds one."""
    if key not in st.session_state:
        st.session_state[key] = value


def plan_key(the_plan: Plan) -> str:
    """The job registry key of a plan: one running pack per model (repo and commit) at a time."""
    return f"{the_plan.model.ref.source}:{the_plan.model.repo_id}@{the_plan.model.commit}"


def edited_dockerfile(state: WizardState, *, generated: str) -> str | None:
    """The user's Dockerfile edit when it still belongs to the plan that renders ``generated``."""
    if state.edited_dockerfile is None:
        return None
    if state.edited_from != generated:
        state.edited_dockerfile = state.edited_from = None  # made for another plan: stale
        return None
    return state.edited_dockerfile if state.edited_dockerfile != generated else None


# URL


def job_from_url() -> str | None:
    return st.query_params.get(JOB_PARAM) or None


def put_job_in_url(job_id: str) -> None:
    if st.query_params.get(JOB_PARAM) != job_id:
        st.query_params[JOB_PARAM] = job_id


def record_from_url() -> str | None:
    return st.query_params.get(RECORD_PARAM) or None


def attached_job(state: WizardState) -> Job | None:
    """The job this tab follows: the URL's (after a refresh or in a new tab) or the state's."""
    from_url = REGISTRY.get(job_from_url())
    if from_url is not None and from_url.id != state.job_id:
        state.job_id = from_url.id
    job = REGISTRY.get(state.job_id)
    if job is None:
        state.job_id = None
        return None
    put_job_in_url(job.id)  # st.switch_page drops query params; keep the job in the URL
    return job


# THE TAB'S SESSION FILE (a refresh starts a new Streamlit session; the file brings the wizard back)


def tab_from_url() -> str | None:
    value = st.query_params.get(TAB_PARAM)
    return value if is_tab_id(value) else None


def keep_url(state: WizardState) -> None:
    """Put the tab (and the job it follows) back in the URL: page switches drop query params."""
    if state.tab_id and st.query_params.get(TAB_PARAM) != state.tab_id:
        st.query_params[TAB_PARAM] = state.tab_id


def snapshot_of(state: WizardState, *, language: str) -> SessionSnapshot:
    return SessionSnapshot(
        model_text=state.model_text if state.model is not None else "",
        model_commit=state.model.commit if state.model is not None else None,
        revision=state.revision,
        target=target_to_dict(state.target) if state.target is not None else None,
        options=options_to_dict(state.options),
        language=language,
        job_id=state.job_id,
        record_id=state.record_id,
        search_query=str(st.session_state.get("search_query") or ""),
        build={
            "output_dir": state.output_dir,
            "compress": state.compress,
            "split": state.split,
            "split_gib": state.split_gib,
        },
        try_page=try_page_of(state),
        generation=state.tab_generation,
    )


# THE TRY PAGE ACROSS A REFRESH (its servers, answers in flight and bench jobs live in this process; the file
# names them by id, so the refreshed tab follows them again)

#: the newest messages of each conversation a session file keeps
KEPT_MESSAGES = 200
_MESSAGE_KEYS = ("role", "content", "figures", "error", "stopped")


def try_page_of(state: WizardState) -> dict[str, Any]:
    chat = state.try_chat
    comparison = state.try_comparison
    return {
        "mode": state.try_mode,
        "record": state.try_record,
        "pair": list(state.try_pair),
        "max_tokens": state.try_max_tokens,
        "temperature": state.try_temperature,
        "compare_temperature": state.try_compare_temperature,
        "prompt": state.try_prompt,
        "messages": {k: _newest_turns(v) for k, v in state.try_messages.items() if v},
        "chat_id": chat.id if chat is not None else None,
        "chat_record": state.try_chat_record if chat is not None else None,
        "comparison_id": comparison.id if comparison is not None else None,
        "bench_job": state.try_bench_job,
        "bench": [state.try_bench_requests, state.try_bench_concurrency, state.try_bench_max_tokens],
    }


def _newest_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest ``KEPT_MESSAGES``, starting on a question (never on an answer whose question was cut)."""
    kept = messages[-KEPT_MESSAGES:]
    while kept and kept[0].get("role") != "user":
        kept = kept[1:]
    return kept


def restore_try_page(state: WizardState, data: Any) -> None:
    """Put what ``try_page_of`` wrote back; a value of the wrong type (an old or hand-edited file) keeps the
    default, so a restore never fails the page."""
    if not isinstance(data, dict):
        return

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and value else None

    def number(key: str, default: float, low: float, high: float) -> float:
        value: Any = data.get(key)
        return float(value) if _in_range(value, low, high) else default

    if data.get("mode") in ("chat", "compare"):
        state.try_mode = str(data["mode"])
    state.try_record = text("record") or state.try_record
    pair = data.get("pair")
    if isinstance(pair, list) and len(pair) == 2 and all(p is None or isinstance(p, str) for p in pair):
        state.try_pair = (pair[0], pair[1])
    state.try_max_tokens = int(number("max_tokens", state.try_max_tokens, 1, 1 << 20))
    state.try_temperature = number("temperature", state.try_temperature, 0.0, 2.0)
    state.try_compare_temperature = number("compare_temperature", state.try_compare_temperature, 0.0, 2.0)
    state.try_prompt = data["prompt"] if isinstance(data.get("prompt"), str) else state.try_prompt
    state.try_messages = _conversations(data.get("messages"))
    chat = LIVE.chats.get(text("chat_id"))
    if chat is not None and text("chat_record"):
        state.try_chat, state.try_chat_record = chat, text("chat_record")
    for record_id, messages in state.try_messages.items():
        followed = state.try_chat is not None and state.try_chat_record == record_id
        if messages[-1]["role"] == "user" and not followed:  # its answer is gone (the wizard restarted)
            messages.append({"role": "assistant", "content": "", "stopped": True})
    state.try_comparison = LIVE.comparisons.get(text("comparison_id")) or state.try_comparison
    state.try_bench_job = text("bench_job") or state.try_bench_job
    bench = data.get("bench")
    if isinstance(bench, list) and len(bench) == 3 and all(type(n) is int and n >= 1 for n in bench):
        state.try_bench_requests, state.try_bench_concurrency, state.try_bench_max_tokens = bench  # the page caps them


def _conversations(data: Any) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(data, dict):
        return {}
    kept: dict[str, list[dict[str, Any]]] = {}
    for record_id, messages in data.items():
        if not isinstance(record_id, str) or not isinstance(messages, list):
            continue
        good = [{**{k: m.get(k) for k in _MESSAGE_KEYS if k in m}, "figures": _figures(m.get("figures"))}
                for m in messages if isinstance(m, dict) and m.get("role") in ("user", "assistant")
                and isinstance(m.get("content"), str)]  # fmt: skip
        if good:
            kept[record_id] = good
    return kept


def _in_range(value: Any, low: float, high: float) -> bool:
    """A JSON number (not a bool, not NaN) from ``low`` to ``high``."""
    return not isinstance(value, bool) and isinstance(value, int | float) and low <= value <= high


def _figures(data: Any) -> dict[str, Any] | None:
    """An answer's figures as ``ChatFigures`` wrote them, or None (a hand-edited or older file)."""
    if not isinstance(data, dict):
        return None

    def number(key: str, *, optional: bool) -> bool:
        value = data.get(key)
        return (optional and value is None) or _in_range(value, 0.0, sys.float_info.max)  # finite, not negative

    fine = number("ttft_s", optional=True) and number("tokens_per_s", optional=True) and number(
        "duration_s", optional=False) and type(data.get("output_tokens")) is int  # fmt: skip
    return {k: data.get(k) for k in ("ttft_s", "output_tokens", "tokens_per_s", "duration_s")} if fine else None


def save_tab(state: WizardState) -> None:
    """Write this tab's session file: after every run (app.py), and by a page before a long loop of its own
    (an answer streaming), so that a refresh in the middle finds what the loop follows."""
    if state.tab_id:
        language = str(st.session_state.get(LANGUAGE_KEY, DEFAULT_LANGUAGE))
        save_session(tab_id=state.tab_id, snapshot=snapshot_of(state, language=language))


def restore_tab(state: WizardState) -> str | None:
    """Give this new session its tab id (the URL's, else a new one) and restore what that tab's file holds.
    Returns the language the file names, if any."""
    tab = tab_from_url()
    state.tab_id = tab or new_tab_id()
    snapshot = load_session(tab_id=tab)
    if snapshot is None:
        return None
    state.tab_generation = snapshot.generation + 1
    if snapshot.model_text:
        from core import hubs
        from core.errors import EzRunnerError
        from core.refs import parse_ref

        try:
            ref = parse_ref(snapshot.model_text)
            # the pinned commit: the same files as before the refresh even if the branch moved since
            at = None if ref.source == "local" else snapshot.model_commit or snapshot.revision or None
            with st.spinner(t("model.inspecting", ref=snapshot.model_text)):
                state.set_model(hubs.inspect(ref=ref, revision=at), text=snapshot.model_text)
        except EzRunnerError:
            state.notices.append(("restore_failed", snapshot.model_text))
    state.model_text = snapshot.model_text
    state.revision = snapshot.revision
    state.target = target_from_dict(snapshot.target) if snapshot.target else None
    state.options = options_from_dict(snapshot.options)
    state.job_id = state.job_id or snapshot.job_id
    state.record_id = snapshot.record_id
    build = snapshot.build
    state.output_dir = str(build.get("output_dir", state.output_dir))
    state.compress = bool(build.get("compress", state.compress))
    state.split = bool(build.get("split", state.split))
    state.split_gib = float(build.get("split_gib", state.split_gib))
    if snapshot.search_query and "search_query" not in st.session_state:
        st.session_state["search_query"] = snapshot.search_query
    restore_try_page(state, snapshot.try_page)
    return snapshot.language
