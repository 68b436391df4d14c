"""Show core errors in the wizard: a translated headline by ``error.code``, then core's own message.

Core's message names the model, the field or the path and says what to do next, so it is always
shown; the headline is what the translation adds for a reader of the other language.
"""

from __future__ import annotations

import streamlit as st

from core.errors import EzRunnerError
from ezrunner_ui.i18n import has, t


def error_text(*, code: str | None, message: str) -> str:
    """Markdown for an error: ``**headline** — message`` where a headline exists for ``code``."""
    key = f"error.{code or 'error'}"
    headline = t(key) if has(key) else t("error.error")
    return f"**{headline}** — {message}"


def show_error(error: EzRunnerError) -> None:
    st.error(error_text(code=error.code, message=str(error)), icon=":material/error:")


def show_error_message(*, code: str | None, message: str) -> None:
    st.error(error_text(code=code, message=message), icon=":material/error:")
