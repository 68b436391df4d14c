import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from core.errors import NoSafetensorsError
from core.hubs.safetensors_header import header_length, parse_header, read_local_header, weight_stats


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "model.embed_tokens.weight": torch.zeros(10, 4, dtype=torch.bfloat16),
        "model.norm.weight": torch.zeros(4, dtype=torch.float32),
        "lm_head.weight": torch.zeros(10, 4, dtype=torch.bfloat16),
        "model.layers.0.q.qweight": torch.zeros(2, 3, dtype=torch.int32),
    }


def test_header_bytes_give_exact_parameters_and_bytes_per_dtype() -> None:
    blob = save(_tensors(), metadata={"format": "pt"})
    length = header_length(blob[:8], file="x.safetensors")
    entries = parse_header(blob[8 : 8 + length], file="x.safetensors")
    stats = weight_stats(entries)
    assert stats.parameters_by_dtype == {"BF16": 80, "F32": 4, "I32": 6}
    assert stats.bytes_by_dtype == {"BF16": 160, "F32": 16, "I32": 24}
    assert stats.tensor_count == 4
    assert stats.lm_head_bytes == 80
    assert stats.total_parameters == 90 and stats.total_bytes == 200


def test_prefixed_lm_head_of_multimodal_checkpoints_counts() -> None:
    blob = save({"language_model.lm_head.weight": torch.zeros(3, 2, dtype=torch.float16)})
    entries = parse_header(blob[8 : 8 + header_length(blob[:8], file="f")], file="f")
    assert weight_stats(entries).lm_head_bytes == 12


def test_local_header_read_never_touches_tensor_data(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path))
    length = header_length(path.read_bytes()[:8], file="f")
    # cut the file right after the header: only a reader of the data would notice
    path.write_bytes(path.read_bytes()[: 8 + length])
    assert weight_stats(read_local_header(path)).total_parameters == 90


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"\x01\x02", "shorter than 8 bytes"),
        (struct.pack("<Q", 0), "out of range"),
        (struct.pack("<Q", 10**12), "out of range"),
    ],
)
def test_bad_prefix_is_reported_with_the_file_name(blob: bytes, why: str) -> None:
    with pytest.raises(NoSafetensorsError, match=why) as caught:
        header_length(blob, file="model-00001.safetensors")
    assert "model-00001.safetensors" in str(caught.value)


def test_non_json_header_and_missing_fields_are_reported() -> None:
    with pytest.raises(NoSafetensorsError, match="not JSON"):
        parse_header(b"{not json", file="f")
    with pytest.raises(NoSafetensorsError, match="dtype/shape/data_offsets"):
        parse_header(json.dumps({"t": {"dtype": "F16"}}).encode(), file="f")


def test_file_ending_inside_its_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", 100) + b"{}")
    with pytest.raises(NoSafetensorsError, match="ends inside its header"):
        read_local_header(path)
