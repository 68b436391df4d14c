"""Which files of a model repo get packed, decided from file names (and the shard index) alone.

Rules, the same for every hub and for local folders:
- only top-level files: sub-folders hold duplicates or other formats (``original/`` with .pth,
  ``onnx/``, ``gguf/``, quantised variants), never what ``from_pretrained`` loads;
- weights are safetensors only; ``.bin``/``.pt``/``.pth``/``.gguf``/``.onnx``/``.h5`` are never packed;
- when ``model.safetensors.index.json`` exists, exactly the shards it names (so Mistral's
  ``consolidated.safetensors`` next to HF-style shards is dropped); without an index,
  ``consolidated*.safetensors`` is dropped whenever other safetensors exist;
- config, generation config, tokenizer, chat template, processor and remote-code files, plus
  licence and model card (small, and a licence should travel with the weights).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from core.errors import NoSafetensorsError

INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

_METADATA_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "*.tiktoken",
    "spiece.model",
    "sentencepiece*.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    # trust_remote_code models need their code next to the weights
    "configuration_*.py",
    "modeling_*.py",
    "tokenization_*.py",
    "processing_*.py",
    "image_processing_*.py",
    "LICENSE",
    "LICENSE.*",
    "LICENSE-*",
    "NOTICE",
    "USE_POLICY.md",
    "README.md",
)

_OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack", ".ckpt", ".ot")


def select_files(paths: Iterable[str], *, repo: str) -> list[str]:
    """Pick the files to pack from a repo listing; raise ``NoSafetensorsError`` when there are no weights.

    The result keeps every top-level safetensors candidate; call ``restrict_to_index`` once the
    index is read to drop shards the index does not name.
    """
    top_level = sorted({p for p in paths if "/" not in p.strip("/")})
    safetensors = [p for p in top_level if p.endswith(".safetensors")]
    if not safetensors:
        others = sorted({p.rsplit(".", 1)[-1] for p in top_level if p.endswith(_OTHER_WEIGHT_SUFFIXES)})
        found = f" It only has {', '.join('.' + o for o in others)} weights." if others else ""
        raise NoSafetensorsError(
            f"'{repo}' has no *.safetensors weights at its top level.{found}",
            hint="Pick a safetensors variant of this model on the hub (search for the name + 'safetensors'), "
            "or convert it locally (load it with transformers and save_pretrained(..., "
            "safe_serialization=True)) and pack that folder.",
        )
    weights = safetensors
    if INDEX_FILE not in top_level:
        non_consolidated = [p for p in safetensors if not p.startswith("consolidated")]
        weights = non_consolidated or safetensors
    metadata = [p for p in top_level if any(fnmatch.fnmatchcase(p, pat) for pat in _METADATA_PATTERNS)]
    index = [INDEX_FILE] if INDEX_FILE in top_level else []
    return sorted(set(weights) | set(metadata) | set(index))


def restrict_to_index(selected: Iterable[str], index: Mapping[str, object], *, repo: str) -> list[str]:
    """Keep only the shards the index's ``weight_map`` names; raise if it names a missing shard."""
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, Mapping) or not weight_map:
        raise NoSafetensorsError(
            f"'{repo}' has a {INDEX_FILE} without a weight_map.",
            hint="The repo looks broken; pick another revision or variant of the model.",
        )
    shards = {str(v) for v in weight_map.values()}
    chosen = list(selected)
    missing = sorted(shards - set(chosen))
    if missing:
        raise NoSafetensorsError(
            f"'{repo}' index names shards that are not in the repo: {', '.join(missing[:3])}.",
            hint="The repo looks incomplete; pick another revision or variant of the model.",
        )
    return sorted(p for p in chosen if not p.endswith(".safetensors") or p in shards)


def weight_files(selected: Iterable[str]) -> list[str]:
    return sorted(p for p in selected if p.endswith(".safetensors"))
