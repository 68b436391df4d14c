"""Every bad input a user can give ends in an EzRunnerError that names the input (``error.field``).

Pure functions only: the same checks run for the CLI, the wizard and any later API, so they are tested at
the boundary where they live (refs parser, target builder, options check, config and header readers).
"""

from __future__ import annotations

import ast
import json
import math
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from core import errors
from core.errors import (
    FIELDS,
    EzRunnerError,
    HubAnswerError,
    InvalidOptionsError,
    InvalidReferenceError,
    InvalidTargetError,
    ModelConfigError,
    NoSafetensorsError,
)
from core.hardware import GPU_PRESETS, describe_target
from core.hubs.local import FolderSnapshot
from core.hubs.repo import check_listing, read_json_file, safetensors_header
from core.hubs.safetensors_header import parse_header
from core.hubs.snapshot import ListedFile
from core.plan import Options, plan, validate_options
from core.refs import MAX_REFERENCE_CHARS, parse_ref, validate_image_ref
from core.sizing import model_shape
from tests.unit.test_sizing import load_config, model_info

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = Path(__file__).parent / "configs"
GPU = describe_target(gpu_preset="a100-80gb")


# THE KEYS


def _field_literals() -> set[tuple[str, str]]:
    """Every ``field="..."`` keyword with a string literal in core/ and ezrunner_ui/."""
    found = set()
    for path in [*ROOT.joinpath("core").rglob("*.py"), *ROOT.joinpath("ezrunner_ui").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "field" and isinstance(node.value, ast.Constant):
                found.add((str(path.relative_to(ROOT)), str(node.value.value)))
    return found


def test_every_field_literal_is_a_documented_key() -> None:
    unknown = {(path, key) for path, key in _field_literals() if key not in FIELDS}
    assert not unknown


def test_every_key_has_a_cli_flag() -> None:
    from ezrunner_ui.cli.common import FLAGS

    assert set(FLAGS) == set(FIELDS)


# MODEL REFERENCES


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "a" * (MAX_REFERENCE_CHARS + 1),
        "org/" + "n" * 97,
        "org/na\x00me",
        "org/na\nme",
        "hf:../etc",
        "hf:org/..",
        "hf:org/a..b",
        "hf:/etc/passwd",
        "hf:org/",
        "hf:/name",
        "ms:org//name",
        "org/name/extra",
        "org/na me",
        "org/ná",
        "xx:org/name",
        "./no-such-folder",
        "/no/such/folder",
        "tests/nonexistent",  # there is a folder "tests" here: a mistyped path, never a hub lookup
    ],
)
def test_bad_model_references_name_the_model(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(InvalidReferenceError) as caught:
        parse_ref(text)
    assert caught.value.field == errors.MODEL
    assert "\n" not in caught.value.message


def test_path_like_reference_says_the_folder_does_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(InvalidReferenceError, match="does not exist"):
        parse_ref("tests/nonexistent")


# TARGETS


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gpu_preset": "l4", "gpu_count": 0}, errors.GPUS),
        ({"gpu_preset": "l4", "gpu_count": -3}, errors.GPUS),
        ({"gpu_preset": "l4", "gpu_count": 10**9}, errors.GPUS),
        ({"gpu_memory_gib": -1.0, "compute_capability": "8.0"}, errors.GPU_MEMORY),
        ({"gpu_memory_gib": 0.0, "compute_capability": "8.0"}, errors.GPU_MEMORY),
        ({"gpu_memory_gib": math.nan, "compute_capability": "8.0"}, errors.GPU_MEMORY),
        ({"gpu_memory_gib": math.inf, "compute_capability": "8.0"}, errors.GPU_MEMORY),
        ({"gpu_memory_gib": 1e300, "compute_capability": "8.0"}, errors.GPU_MEMORY),
        ({"cpu_only": True, "ram_gib": math.nan}, errors.RAM),
        ({"cpu_only": True, "ram_gib": math.inf}, errors.RAM),
        ({"cpu_only": True, "ram_gib": -1.0}, errors.RAM),
        ({"cpu_only": True, "ram_gib": 1e12}, errors.RAM),
        ({"cpu_only": True, "cpu_cores": 0}, errors.CPU_CORES),
        ({"cpu_only": True, "cpu_cores": 10**9}, errors.CPU_CORES),
        ({"gpu_preset": "no-such-card"}, errors.GPU_PRESET),
        ({"gpu_preset": "l4", "driver_version": "abc"}, errors.DRIVER),
        ({"gpu_preset": "l4", "compute_capability": "99.1"}, errors.COMPUTE_CAPABILITY),
        ({"gpu_preset": "l4", "gpu_api": "vulkan"}, errors.GPU_API),
        ({"gpu_preset": "arc-a770", "gpu_api": "rocm"}, errors.GPU_API),
        ({"gpu_preset": "mi300x", "compute_capability": "9.0"}, errors.COMPUTE_CAPABILITY),
    ],
)
def test_bad_targets_name_the_input(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidTargetError) as caught:
        describe_target(**kwargs)
    assert caught.value.field == field


def test_amd_and_intel_presets_plan_with_llama_cpp_on_their_interface() -> None:
    from core.engines.llamacpp import device_for

    assert GPU_PRESETS["mi300x"].memory_gib == 192
    assert device_for(describe_target(gpu_preset="AMD Instinct MI300X")) == "rocm"
    assert device_for(describe_target(gpu_preset="rx 7900 xtx", gpu_count=2)) == "rocm"
    assert device_for(describe_target(gpu_preset="w7900", gpu_api="vulkan")) == "vulkan"
    assert device_for(describe_target(gpu_preset="Intel Arc A770")) == "vulkan"
    target = describe_target(gpu_preset="mi210", gpu_api="vulkan")
    assert target.label == "1 × AMD Instinct MI210 64GB (Vulkan)"
    result = plan(model=model_info("Qwen2.5-0.5B"), target=target)
    assert (result.engine, result.device) == ("llama.cpp", "vulkan")


# OPTIONS


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (Options(max_model_len=0), errors.MAX_MODEL_LEN),
        (Options(max_model_len=-5), errors.MAX_MODEL_LEN),
        (Options(max_model_len=10**15), errors.MAX_MODEL_LEN),
        (Options(gpu_memory_utilization=math.nan), errors.GPU_MEMORY_UTILIZATION),
        (Options(gpu_memory_utilization=math.inf), errors.GPU_MEMORY_UTILIZATION),
        (Options(gpu_memory_utilization=0.0), errors.GPU_MEMORY_UTILIZATION),
        (Options(port=0), errors.PORT),
        (Options(port=-1), errors.PORT),
        (Options(port=70000), errors.PORT),
        (Options(parallel=0), errors.PARALLEL),
        (Options(parallel=10**9), errors.PARALLEL),
        (Options(tensor_parallel_size=0), errors.TENSOR_PARALLEL_SIZE),
        (Options(tensor_parallel_size=2), errors.TENSOR_PARALLEL_SIZE),  # the target has 1 GPU
        (Options(base_image="not a reference"), errors.BASE_IMAGE),
        (Options(base_image="vllm/vllm-openai"), errors.BASE_IMAGE),  # not pinned
        (Options(base_image="python:3.11\nRUN curl evil"), errors.BASE_IMAGE),
    ],
)
def test_bad_options_name_the_option(options: Options, field: str) -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        validate_options(options=options, target=GPU)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "text",
    ["", " ", "UPPER:1", "Foo/bar:1", "a b:1", "x:1;rm -rf /", "x:1\ny", "-x:1", "x:" + "t" * 200, "x@sha256:12"],
)
def test_bad_image_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        validate_image_ref(text)
    assert caught.value.field == errors.BASE_IMAGE


@pytest.mark.parametrize(
    "text",
    ["vllm/vllm-openai:v0.11.0", "localhost:5000/a/b:1", "registry.example.com:5000/team/engine:tag",
     "python@sha256:" + "a" * 64, "ezrunner/llama.cpp-cpu:b11312"],
)  # fmt: skip
def test_good_image_references_pass(text: str) -> None:
    assert validate_image_ref(text) == text


# CONFIG.JSON


def _garbage_values(rng: random.Random) -> list[Any]:
    return [
        -1, 0, -(10**12), 10**30, 1.5, math.nan, math.inf, "12", "", None, True, [], [4], {}, {"a": 1},
        rng.randint(-(10**6), 10**6), rng.random() * 1e9,
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.json")))
def test_damaged_configs_plan_or_fail_with_a_config_error(name: str) -> None:
    """Each key of each real config replaced by garbage: sizing either copes or names config.json."""
    rng = random.Random(name)
    config = load_config(name)
    keys = sorted(config) + [f"text_config.{k}" for k in sorted(config.get("text_config") or {})]
    for key in rng.sample(keys, min(len(keys), 25)):
        for value in _garbage_values(rng):
            damaged = json.loads(json.dumps(config))
            table = damaged["text_config"] if key.startswith("text_config.") else damaged
            table[key.removeprefix("text_config.")] = value
            try:
                model_shape(config=damaged)
            except EzRunnerError as error:
                assert error.field == errors.CONFIG, (key, value, error)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_position_embeddings", -4096),
        ("max_position_embeddings", 10**18),
        ("num_hidden_layers", 0),
        ("hidden_size", 2.5),
        ("num_key_value_heads", 10**9),
        ("vocab_size", -1),
    ],
)
def test_negative_or_absurd_sizes_are_refused(key: str, value: Any) -> None:
    config = load_config("Llama-3.1-8B-Instruct") | {key: value}
    with pytest.raises(ModelConfigError) as caught:
        plan(model=model_info("Llama-3.1-8B-Instruct", config=config), target=GPU)
    assert key in str(caught.value)
    assert caught.value.field == errors.CONFIG


class _CountingSnapshot:
    """A snapshot that records every read, to prove what was (not) read."""

    def __init__(self, files: dict[str, bytes], *, listed: dict[str, int] | None = None) -> None:
        self.label = "org/name"
        self.contents = files
        self.files = {p: ListedFile(size=(listed or {}).get(p, len(c))) for p, c in files.items()}
        self.reads: list[str] = []

    def read(self, path: str, *, max_bytes: int) -> bytes:
        self.reads.append(path)
        return self.contents[path][: max_bytes + 1]

    def read_range(self, path: str, *, start: int, length: int) -> bytes:
        self.reads.append(path)
        return self.contents[path][start : start + length]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"{not json", "cannot be read as JSON"),
        (b'{"max_position_embeddings": NaN}', "NaN"),
        (b'{"max_position_embeddings": Infinity}', "Infinity"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "cannot be read as JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "cannot be read as JSON"),
    ],
)
def test_unreadable_config_json_names_the_file(body: bytes, says: str) -> None:
    with pytest.raises(ModelConfigError, match=says) as caught:
        read_json_file(_CountingSnapshot({"config.json": body}), "config.json")
    assert caught.value.field == errors.CONFIG
    assert "config.json" in caught.value.message


def test_oversized_config_is_refused_without_reading_it() -> None:
    snapshot = _CountingSnapshot({"config.json": b"{}"}, listed={"config.json": 1 << 40})
    with pytest.raises(ModelConfigError, match="far more than a JSON config holds"):
        read_json_file(snapshot, "config.json")
    assert snapshot.reads == []


def test_oversized_local_config_is_refused_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "config.json"
    with huge.open("wb") as handle:  # a sparse 64 GiB file: reading it would take minutes and the RAM
        handle.truncate(64 << 30)
    with pytest.raises(ModelConfigError, match="far more than a JSON config holds"):
        read_json_file(FolderSnapshot.of(tmp_path), "config.json")


def test_body_shorter_than_listed_is_a_hub_answer_error() -> None:
    snapshot = _CountingSnapshot({"config.json": b"{}"}, listed={"config.json": 200})
    with pytest.raises(HubAnswerError, match="listing says 200"):
        read_json_file(snapshot, "config.json")


# WEIGHT HEADERS


def _shard(header: dict[str, Any], data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    ("header", "data", "says"),
    [
        ({"w": {"dtype": "Q9_FANCY", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "does not define"),
        ({"w": {"dtype": "F16", "shape": [-2], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"w": {"dtype": "F16", "shape": [1.5], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"w": {"dtype": "F16", "shape": [2], "data_offsets": [4, 0]}}, b"\0" * 4, "data offsets"),
        ({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4000]}}, b"\0" * 4, "past the file"),
        ({"w": {"dtype": "F16", "shape": [1000], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 2,000 bytes"),
        ({"w": {"dtype": "F16", "shape": [2]}}, b"", "dtype/shape/data_offsets"),
    ],
)
def test_lying_safetensors_headers_name_the_weights(header: dict[str, Any], data: bytes, says: str) -> None:
    snapshot = _CountingSnapshot({"model.safetensors": _shard(header, data)})
    with pytest.raises(NoSafetensorsError, match=says) as caught:
        safetensors_header(snapshot, "model.safetensors")
    assert caught.value.field == errors.WEIGHTS


def test_header_length_past_the_file_is_refused() -> None:
    blob = struct.pack("<Q", 5000) + b"{}"
    with pytest.raises(NoSafetensorsError, match="has only"):
        safetensors_header(_CountingSnapshot({"model.safetensors": blob}), "model.safetensors")


def test_non_json_and_nan_headers_are_refused() -> None:
    for raw in (b"{not json", b'{"w": NaN}', b"\xff" * 8):
        with pytest.raises(NoSafetensorsError):
            parse_header(raw, file="model.safetensors")


# HUB LISTINGS


@pytest.mark.parametrize(
    "name",
    ["../evil.safetensors", "a/../../evil", "/etc/passwd", "a//b", "./config.json", "a\\b", "C:evil", "x\x00y",
     "x\ny", "a/" * 3000 + "b"],
)  # fmt: skip
def test_listings_with_escaping_names_are_refused(name: str) -> None:
    snapshot = _CountingSnapshot({"config.json": b"{}", name: b""})
    with pytest.raises(HubAnswerError) as caught:
        check_listing(snapshot)
    assert caught.value.field == errors.MODEL


# REVISIONS, SEARCH, NAMES


@pytest.mark.parametrize(
    "revision",
    ["", " ", "../../api/models", "main/../x", "a b", "x\ny", "-rf", "branch.lock", "a//b", "/main", "main/",
     "ref@{1}", "x" * 256, "tag:1", "a~1", "a^"],
)  # fmt: skip
def test_bad_revisions_name_the_revision(revision: str) -> None:
    from core.refs import validate_revision

    with pytest.raises(InvalidReferenceError) as caught:
        validate_revision(revision)
    assert caught.value.field == errors.REVISION


@pytest.mark.parametrize("revision", ["main", "master", "v1.0", "refs/pr/1", "0123abc", "release-2024.01_rc"])
def test_good_revisions_pass(revision: str) -> None:
    from core.refs import validate_revision

    assert validate_revision(revision) == revision


@pytest.mark.parametrize("limit", [0, -1, 10**9])
def test_search_limit_is_checked_before_any_hub(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import hubs

    monkeypatch.setattr(hubs, "hub_for", lambda source: pytest.fail("a hub was asked"))
    with pytest.raises(InvalidOptionsError) as caught:
        hubs.search(query="llama", limit=limit)
    assert caught.value.field == errors.LIMIT


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (Options(quant="Q4 K M"), errors.QUANT),
        (Options(quant="../x"), errors.QUANT),
        (Options(gguf_pre_tokenizer="llama bpe; rm"), errors.GGUF_PRE_TOKENIZER),
        (Options(kv_cache_type="q3_banana"), errors.KV_CACHE_TYPE),
    ],
)
def test_bad_names_name_the_option(options: Options, field: str) -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        validate_options(options=options, target=GPU)
    assert caught.value.field == field


# THE FILE SYSTEM


@pytest.mark.parametrize(
    ("number", "kind", "says"),
    [
        (28, errors.DiskSpaceError, "disk is full"),  # ENOSPC
        (30, errors.NotWritableError, "read-only"),  # EROFS
        (13, errors.NotWritableError, "Permission denied"),  # EACCES
        (5, EzRunnerError, "Input/output error"),  # EIO
    ],
)
def test_os_errors_name_the_real_cause_and_the_path(number: int, kind: type[EzRunnerError], says: str) -> None:
    error = OSError(number, os.strerror(number), "/data/out/model.tar")
    converted = errors.from_os_error(error, doing="writing the archive", field=errors.OUTPUT)
    assert isinstance(converted, kind)
    text = str(converted)
    assert says in text and "/data/out/model.tar" in text and "writing the archive" in text
    assert converted.field == errors.OUTPUT


def test_sockets_are_not_file_system_errors() -> None:
    assert not errors.is_file_system_error(ConnectionRefusedError(111, "refused"))
    assert errors.is_file_system_error(PermissionError(13, "denied", "/x"))


def test_writable_check_leaves_nothing_and_names_a_blocking_file(tmp_path: Path) -> None:
    errors.check_writable_dir(path=tmp_path / "not" / "made" / "yet", field=errors.OUTPUT, doing="checking")
    assert list(tmp_path.iterdir()) == []  # nothing made, nothing left
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EzRunnerError) as caught:
        errors.check_writable_dir(path=blocker / "sub", field=errors.HOME, doing="checking EZ Runner's data folder")
    assert str(blocker) in str(caught.value) and caught.value.field == errors.HOME


def test_free_disk_of_odd_paths_is_the_nearest_readable_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.hardware import free_disk_bytes

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.chdir(tmp_path)
    for odd in (blocker / "under" / "a-file", tmp_path / ("x" * 300) / "y", Path("relative/not/made"), Path("~/nope")):
        assert free_disk_bytes(path=odd) > 0
