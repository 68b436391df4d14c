import pytest

from core.errors import NoSafetensorsError
from core.hubs.selection import INDEX_FILE, restrict_to_index, select_files, weight_files

TOKENIZER = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]


def test_mistral_style_repo_packs_the_indexed_shards_not_consolidated() -> None:
    listing = [
        "config.json",
        "consolidated.safetensors",
        "params.json",
        "tekken.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        INDEX_FILE,
        *TOKENIZER,
        ".gitattributes",
    ]
    selected = select_files(listing, repo="mistralai/x")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    packed = restrict_to_index(selected, index, repo="mistralai/x")
    assert weight_files(packed) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert "consolidated.safetensors" not in packed
    assert {"params.json", "tekken.json", ".gitattributes"}.isdisjoint(packed)
    assert {"config.json", INDEX_FILE, *TOKENIZER} <= set(packed)


def test_consolidated_dropped_without_index_when_other_weights_exist() -> None:
    selected = select_files(["config.json", "consolidated.safetensors", "model.safetensors"], repo="r")
    assert weight_files(selected) == ["model.safetensors"]


def test_consolidated_alone_is_kept() -> None:
    assert weight_files(select_files(["config.json", "consolidated.safetensors"], repo="r")) == [
        "consolidated.safetensors"
    ]


def test_bin_is_never_packed_when_safetensors_exist() -> None:
    listing = ["config.json", "model.safetensors", "pytorch_model.bin", "pytorch_model.bin.index.json", "model.gguf"]
    assert select_files(listing, repo="r") == ["config.json", "model.safetensors"]


def test_subfolders_are_never_packed() -> None:
    listing = [
        "config.json",
        "model.safetensors",
        "original/consolidated.00.pth",
        "original/params.json",
        "original/tokenizer.model",
        "onnx/model.onnx",
        "gguf/model-q4.gguf",
        "subdir/model.safetensors",
    ]
    assert select_files(listing, repo="r") == ["config.json", "model.safetensors"]


def test_tokenizer_template_processor_code_and_licence_files_travel() -> None:
    wanted = [
        "tokenizer.model",
        "vocab.json",
        "merges.txt",
        "vocab.txt",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "qwen.tiktoken",
        "preprocessor_config.json",
        "configuration_deepseek.py",
        "modeling_deepseek.py",
        "tokenization_chatglm.py",
        "LICENSE",
        "LICENSE.txt",
        "README.md",
    ]
    unwanted = ["train.py", "figures.png", "results.csv", ".gitattributes", "flax_model.msgpack", "model.onnx"]
    selected = select_files(["config.json", "model.safetensors", *wanted, *unwanted], repo="r")
    assert set(wanted) <= set(selected)
    assert set(unwanted).isdisjoint(selected)


def test_no_safetensors_names_what_it_found_and_what_to_do() -> None:
    with pytest.raises(NoSafetensorsError) as caught:
        select_files(["config.json", "pytorch_model.bin", "model.gguf", "original/x.safetensors"], repo="old/model")
    text = str(caught.value)
    assert "old/model" in text and ".bin" in text and ".gguf" in text
    assert "safetensors variant" in text and "convert" in text


def test_index_naming_a_missing_shard_is_an_error() -> None:
    selected = select_files(["config.json", INDEX_FILE, "model-00001-of-00002.safetensors"], repo="r")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    with pytest.raises(NoSafetensorsError, match="model-00002-of-00002"):
        restrict_to_index(selected, index, repo="r")


def test_index_without_weight_map_is_an_error() -> None:
    with pytest.raises(NoSafetensorsError, match="weight_map"):
        restrict_to_index(["model.safetensors"], {"metadata": {}}, repo="r")
