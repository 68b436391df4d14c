"""Show core errors in the wizard: a translated headline by ``error.code``, then core's own message.

Core's message names the model, the field or the path and says what to do next, so it is always
shown; the headline is what the translation adds for a reader of the other language.
"""

from __future__ import annotations

import streamlit as st

from core.docker import api as docker_api
from core.errors import EzRunnerError
from ezrunner_ui.i18n import has, t


def error_text(*, code: str | None, message: str, field: str | None = None) -> str:
    """Markdown for an error: ``**headline** — message`` where a headline exists for ``code``, then the field
    to change in the wizard's own words (core's ``error.field`` key, where core names one)."""
    key = f"error.{code or 'error'}"
    headline = t(key) if has(key) else t("error.error")
    text = f"**{headline}** — {message}"
    if field and has(f"field.{field}"):
        text += "\n\n" + t("field.label", label=t(f"field.{field}"))
    return text


def show_error(error: EzRunnerError) -> None:
    field = getattr(error, "field", None)
    st.error(error_text(code=error.code, message=str(error), field=field if isinstance(field, str) else None),
             icon=":material/error:")  # fmt: skip


def show_error_message(*, code: str | None, message: str) -> None:
    st.error(error_text(code=code, message=message), icon=":material/error:")


def docker_problem() -> EzRunnerError | None:
    """Why Docker cannot be used right now, or None when it answers."""
    try:
        client = docker_api.connect(timeout=10)
    except EzRunnerError as error:
        return error
    client.close()
    return None
