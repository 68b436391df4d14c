from pathlib import Path

import pytest

from core.errors import InvalidReferenceError
from core.refs import ModelRef, parse_ref


@pytest.mark.parametrize(
    ("text", "source", "repo_id"),
    [
        ("hf:Qwen/Qwen2.5-7B-Instruct", "hf", "Qwen/Qwen2.5-7B-Instruct"),
        ("ms:qwen/Qwen2.5-7B-Instruct", "ms", "qwen/Qwen2.5-7B-Instruct"),
        ("HF:meta-llama/Llama-3.1-8B", "hf", "meta-llama/Llama-3.1-8B"),
        ("  deepseek-ai/DeepSeek-R1_Distill.v2  ", "auto", "deepseek-ai/DeepSeek-R1_Distill.v2"),
    ],
)
def test_hub_references_keep_source_and_id(text: str, source: str, repo_id: str) -> None:
    ref = parse_ref(text)
    assert (ref.source, ref.repo_id, ref.path) == (source, repo_id, None)


def test_str_round_trips_through_parse() -> None:
    for text in ("hf:a/b", "ms:a/b", "a/b"):
        assert str(parse_ref(text)) == text
        assert parse_ref(str(parse_ref(text))) == parse_ref(text)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("hf:", "names no model"),
        ("hf:justaname", "exactly one '/'"),
        ("hf:a/b/c", "exactly one '/'"),
        ("hf:../etc", "invalid org or name"),
        ("hf:org/..", "invalid org or name"),
        ("hf:org/na..me", "invalid org or name"),
        ("ms:org/na me", "invalid org or name"),
        ("hf:org/name$", "invalid org or name"),
        ("hf:/etc/passwd", "file path as a hub id"),
        ("hf:~/models/x", "file path as a hub id"),
        ("xx:org/name", "Unknown hub prefix"),
        ("justaname", "exactly one '/'"),
        ("org/", "invalid org or name"),
    ],
)
def test_invalid_references_say_what_to_type(text: str, says: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse_ref(text)
    assert says in str(caught.value)
    assert "hf:org/name" in str(caught.value) or "org/name" in str(caught.value)


def test_existing_directory_is_local_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert parse_ref(str(folder)) == ModelRef(source="local", path=folder.resolve())
    monkeypatch.chdir(tmp_path)
    assert parse_ref("./my-model") == ModelRef(source="local", path=folder.resolve())


def test_existing_directory_named_like_org_name_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_ref("org/name").source == "local"


@pytest.mark.parametrize("text", ["/definitely/not/here", "./missing-model", "~/no-such-model-dir-xyz", "a/b/c"])
def test_path_that_does_not_exist_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="does not exist"):
        parse_ref(text)


def test_a_file_is_not_a_model_folder(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(InvalidReferenceError, match="is a file, not a folder"):
        parse_ref(str(file))
