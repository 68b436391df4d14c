"""core.fit_check: the planner's verdict for a model on a target, from the model's real headers."""

from __future__ import annotations

from pathlib import Path

from core.fit_check import FitCheck, check_fit, fits_only
from core.hardware import describe_target
from tests.fixtures.tiny_model import make_tiny_llama


def test_a_local_model_is_planned_for_the_target(tmp_path: Path) -> None:
    folder = make_tiny_llama(tmp_path / "m")
    roomy = check_fit(ref=str(folder), target=describe_target(cpu_only=True, ram_gib=16))
    assert roomy.verdict in ("fits", "short_context") and roomy.engine == "transformers"
    tight = check_fit(ref=str(folder), target=describe_target(cpu_only=True, ram_gib=0.0001))
    assert tight.verdict == "no_fit"


def test_a_model_that_cannot_be_read_is_unknown_with_the_reason(tmp_path: Path) -> None:
    check = check_fit(ref=str(tmp_path / "missing"), target=describe_target(cpu_only=True, ram_gib=16))
    assert check.verdict == "unknown" and check.error_code and "does not exist" in check.message


def test_fits_only_keeps_order_and_drops_unknown_and_too_big() -> None:
    checks = {
        "hf:a": FitCheck(ref="hf:a", verdict="fits"),
        "hf:b": FitCheck(ref="hf:b", verdict="no_fit"),
        "hf:c": FitCheck(ref="hf:c", verdict="short_context"),
        "hf:d": FitCheck(ref="hf:d", verdict="unknown"),
    }
    assert fits_only(checks, ["hf:c", "hf:b", "hf:a", "hf:d", "hf:e"]) == ["hf:c", "hf:a"]
