"""Inference engines behind one ``Engine`` protocol. ``ENGINES`` is the one list of them (adding an
engine = one module, one template, one golden test, one line here); ``engine_for(name)`` the one lookup."""

from __future__ import annotations

from collections.abc import Mapping

from core.engines.base import Engine
from core.engines.llamacpp import LlamaCppEngine
from core.engines.transformers import TransformersEngine
from core.engines.vllm import VllmEngine
from core.errors import InvalidOptionsError

ENGINES: Mapping[str, Engine] = {
    engine.name: engine for engine in (VllmEngine(), LlamaCppEngine(), TransformersEngine())
}


def engine_for(name: str) -> Engine:
    """The engine called ``name`` (a key of ``ENGINES``)."""
    try:
        return ENGINES[name]
    except KeyError:
        raise InvalidOptionsError(
            f"Unknown engine {name!r}.", hint=f"Choose one of: {', '.join(ENGINES)}, or auto."
        ) from None


def engine_names() -> tuple[str, ...]:
    """What ``--engine`` accepts besides "auto"."""
    return tuple(ENGINES)


__all__ = ["ENGINES", "Engine", "engine_for", "engine_names"]
