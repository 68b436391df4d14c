"""The wizard's entrypoint: language switch, page router, step indicator, current-job badge.

Streamlit reruns this file on every interaction; it draws the shared frame and then runs the chosen
page from ``views/``. Widgets drawn here (the language switch) keep their value on every page.

The pages live in ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder next to the
entrypoint as a legacy multipage app and, in a fresh process, runs ``/model`` straight from that
folder with its own menu, skipping this frame and ``st.navigation``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ezrunner_ui.app_options import drop_stale_widgets, show_notices
from ezrunner_ui.i18n import DEFAULT_LANGUAGE, LANGUAGE_KEY, LANGUAGE_WIDGET, LANGUAGES, t
from ezrunner_ui.state import (
    PAGE_BUILD,
    PAGE_DOWNLOAD,
    PAGE_HARDWARE,
    PAGE_HISTORY,
    PAGE_MODEL,
    PAGE_PLAN,
    PAGE_TRY,
    WizardState,
    attached_job,
    keep_url,
    restore_tab,
    save_tab,
    wizard,
)

# A local file, not a ":material/...:" icon: Streamlit's frontend fetches those favicons from
# fonts.gstatic.com (the `materialsymbolsrounded/<name>/default/24px.svg` URL in its bundle), and the wizard
# must not make a single request off this machine.
FAVICON = Path(__file__).resolve().parent / "assets" / "favicon.png"
st.set_page_config(page_title="EZ Runner", page_icon=str(FAVICON), layout="wide")

state = wizard()
if state.tab_id is None:
    # a new session: a first visit, or a refresh of a tab whose wizard is in its session file
    restored_language = restore_tab(state)
    if restored_language in LANGUAGES:
        st.session_state[LANGUAGE_KEY] = restored_language
keep_url(state)
drop_stale_widgets(state)
if LANGUAGE_KEY not in st.session_state:
    st.session_state[LANGUAGE_KEY] = DEFAULT_LANGUAGE
# The selectbox has its own key, re-seeded every run from the chosen language, so the choice
# survives whatever happens to widget values on page switches.
st.session_state[LANGUAGE_WIDGET] = st.session_state[LANGUAGE_KEY]


def _choose_language() -> None:
    st.session_state[LANGUAGE_KEY] = st.session_state[LANGUAGE_WIDGET]


with st.sidebar:
    st.selectbox(
        t("app.language"),
        options=list(LANGUAGES),
        format_func=lambda code: LANGUAGES[code],
        key=LANGUAGE_WIDGET,
        on_change=_choose_language,
    )

steps = [
    st.Page(PAGE_MODEL, title=t("nav.model"), icon=":material/search:", default=True),
    st.Page(PAGE_HARDWARE, title=t("nav.hardware"), icon=":material/memory:", url_path="hardware"),
    st.Page(PAGE_PLAN, title=t("nav.plan"), icon=":material/tune:", url_path="plan"),
    st.Page(PAGE_BUILD, title=t("nav.build"), icon=":material/construction:", url_path="build"),
    st.Page(PAGE_DOWNLOAD, title=t("nav.download"), icon=":material/download:", url_path="download"),
    st.Page(PAGE_TRY, title=t("nav.try"), icon=":material/chat:", url_path="try"),
]
history = st.Page(PAGE_HISTORY, title=t("nav.history"), icon=":material/history:", url_path="history")
current = st.navigation({t("nav.wizard"): steps, t("nav.records"): [history]})


def _step_done(state: WizardState) -> list[bool]:
    """Which steps are complete, in order: model, hardware, plan, build, download, try."""
    job = attached_job(state)
    built = state.record_id is not None or (job is not None and job.snapshot().state == "succeeded")
    return [
        state.model is not None,
        state.target is not None,
        state.model is not None and state.target is not None,
        built,
        False,  # downloading happens outside the app; the step is never "done" here
        False,  # trying is never over: any pack can be driven again
    ]


def _step_indicator(state: WizardState) -> None:
    done = _step_done(state)
    columns = st.columns(len(steps))
    for column, page, finished in zip(columns, steps, done, strict=True):
        is_current = page.url_path == current.url_path
        label = f"✓ {page.title}" if finished else page.title
        column.page_link(page, label=f"**{label}**" if is_current else label, disabled=is_current)


with st.sidebar:
    job = attached_job(state)
    if job is not None:
        snapshot = job.snapshot()
        st.caption(t("app.current_job"))
        st.page_link(steps[3], label=t(f"job_state.{snapshot.state}"), icon=":material/construction:")
    st.caption(t("app.tagline"))

if current.url_path != history.url_path:
    _step_indicator(state)
show_notices(state)
try:
    current.run()
finally:
    # also when the page switched or reran (Streamlit stops a run by raising): the file is always current
    save_tab(state)
