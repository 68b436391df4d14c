"""How a model's files are split into image layers.

The Dockerfile (docker-build path) and the streaming archive writer (fast path) both use this, so the
two paths produce the same layers. Small files (config, tokenizer, index) go in one layer first; weight
shards follow, grouped into layers of at most ``cap_bytes`` (a shard larger than the cap gets a layer
of its own). Capped layers keep every tar entry far from the 8 GiB ustar limit where that is possible,
and let a new revision of a model share the layers whose shards did not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.hubs.base import ModelFile

DEFAULT_LAYER_CAP_BYTES = 4 << 30
WEIGHT_SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True)
class WeightLayer:
    """One image layer of model files; ``name`` is its folder in the build context (``layers/<name>``)."""

    name: str
    files: tuple[ModelFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def is_weight_file(path: str) -> bool:
    return path.endswith(WEIGHT_SUFFIXES)


def plan_layers(*, files: Sequence[ModelFile], cap_bytes: int = DEFAULT_LAYER_CAP_BYTES) -> tuple[WeightLayer, ...]:
    """Group ``files`` into layers: metadata first, then shards in name order, each group ≤ ``cap_bytes``."""
    if cap_bytes <= 0:
        raise ValueError("cap_bytes must be positive")
    meta = tuple(sorted((f for f in files if not is_weight_file(f.path)), key=lambda f: f.path))
    shards = sorted((f for f in files if is_weight_file(f.path)), key=lambda f: f.path)
    groups: list[list[ModelFile]] = []
    for shard in shards:
        if groups and sum(f.size for f in groups[-1]) + shard.size <= cap_bytes:
            groups[-1].append(shard)
        else:
            groups.append([shard])
    layers = [WeightLayer(name="00-meta", files=meta)] if meta else []
    layers += [WeightLayer(name=f"{i:02d}-weights", files=tuple(g)) for i, g in enumerate(groups, start=1)]
    return tuple(layers)
