"""Inference engines behind one ``Engine`` protocol; ``engine_for(name)`` is the only lookup."""

from __future__ import annotations

from collections.abc import Mapping

from core.engines.base import Engine
from core.engines.transformers import TransformersEngine
from core.engines.vllm import VllmEngine
from core.errors import InvalidOptionsError

ENGINES: Mapping[str, Engine] = {"vllm": VllmEngine(), "transformers": TransformersEngine()}


def engine_for(name: str) -> Engine:
    """The engine called ``name`` ("vllm" or "transformers")."""
    try:
        return ENGINES[name]
    except KeyError:
        raise InvalidOptionsError(
            f"Unknown engine {name!r}.", hint=f"Choose one of: {', '.join(ENGINES)}, or auto."
        ) from None


__all__ = ["ENGINES", "Engine", "engine_for"]
