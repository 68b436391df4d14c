"""Whether a search result fits a target: the planner over the model's real headers, not a guess.

Each check reads what ``core.hubs.inspect`` reads (the file listing, config.json and the safetensors or GGUF
headers by HTTP range reads, never the weights) and plans it for the target, so the verdict is the one the
Plan page would show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core import hubs
from core.errors import EzRunnerError
from core.hardware import Target
from core.plan import plan
from core.planning import Options
from core.refs import parse_ref

Verdict = Literal["fits", "short_context", "no_fit", "unknown"]


@dataclass(frozen=True)
class FitCheck:
    ref: str  # "hf:org/name"
    verdict: Verdict
    engine: str | None = None
    max_model_len: int | None = None
    context_length: int | None = None
    error_code: str | None = None  # why the verdict is "unknown" (gated, no weights, …)
    message: str = ""


def check_fit(*, ref: str, target: Target, options: Options | None = None, token: str | None = None) -> FitCheck:
    """The planner's verdict for ``ref`` on ``target``: fits with the model's full context, fits with a shorter
    one, does not fit, or unknown (the model could not be read: the error's code and message say why)."""
    try:
        info = hubs.inspect(ref=parse_ref(ref), token=token)
        chosen = plan(model=info, target=target, options=options or Options())
    except EzRunnerError as error:
        return FitCheck(ref=ref, verdict="unknown", error_code=error.code, message=str(error))
    if not chosen.fits:
        verdict: Verdict = "no_fit"
    elif chosen.context_length and chosen.max_model_len < chosen.context_length:
        verdict = "short_context"
    else:
        verdict = "fits"
    return FitCheck(ref=ref, verdict=verdict, engine=chosen.engine, max_model_len=chosen.max_model_len,
                    context_length=chosen.context_length)  # fmt: skip


def fits_only(checks: dict[str, FitCheck], refs: list[str]) -> list[str]:
    """The refs whose check says they fit (with the full or a shorter context), in their order."""
    return [ref for ref in refs if ref in checks and checks[ref].verdict in ("fits", "short_context")]
