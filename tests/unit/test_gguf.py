"""core.gguf: the header reader on real files and hostile ones, quant names, split grouping, architectures."""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import InvalidGgufError
from core.gguf import (
    FIRST_READ_BYTES,
    GGML_TYPES,
    LLAMA_CPP_ARCHITECTURES,
    GgufArraySummary,
    GgufHeader,
    bits_per_weight,
    check_architecture,
    group_gguf_files,
    header_bits_per_weight,
    quant_from_file_type,
    quant_from_filename,
    read_gguf_header,
    read_local_gguf,
    require_complete,
)
from core.llamacpp_source import llama_cpp_source
from tests.fixtures.tiny_gguf import Typed, gguf_bytes, make_tiny_gguf, make_tiny_gguf_quantized

TINY = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64}


def _reader(blob: bytes, log: list[tuple[int, int]] | None = None):
    def read_at(offset: int, length: int) -> bytes:
        if log is not None:
            log.append((offset, length))
        return blob[offset : offset + length]

    return read_at


def _parse(blob: bytes, *, file_size: int | None = None, **kwargs: int) -> GgufHeader:
    return read_gguf_header(read_at=_reader(blob), file="model.gguf", file_size=file_size, **kwargs)


@pytest.fixture(scope="module")
def gguf_py() -> Iterator[object]:
    """llama.cpp's own Python reader from the pinned tree (gguf-py), for independent checks."""
    path = str(llama_cpp_source(fetch=False) / "gguf-py")
    sys.path.insert(0, path)
    try:
        import gguf

        yield gguf
    finally:
        sys.path.remove(path)


# REAL FILES


@pytest.mark.parametrize("make", [lambda: make_tiny_gguf(), lambda: make_tiny_gguf(outtype="q8_0"),
                                  lambda: make_tiny_gguf_quantized(quant="Q4_K_M")])
def test_header_of_converted_files_matches_llama_cpps_own_reader(make, gguf_py) -> None:
    path: Path = make()
    header = read_local_gguf(path)
    theirs = gguf_py.GGUFReader(str(path))
    assert header.data_offset == theirs.data_offset
    assert header.alignment == theirs.alignment
    assert [t.name for t in header.tensors] == [t.name for t in theirs.tensors]
    for ours, their in zip(header.tensors, theirs.tensors, strict=True):
        assert ours.shape == tuple(int(d) for d in their.shape)
        assert ours.ggml_type == their.tensor_type.name
        assert header.data_offset + ours.offset == their.data_offset
        assert ours.nbytes == their.n_bytes
    assert set(header.metadata) == {k for k in theirs.fields if not k.startswith("GGUF.")}
    # the tensors fill the file to its last byte: nothing was read past the header, yet sizes are exact
    last = header.tensors[-1]
    assert header.data_offset + last.offset + last.nbytes == path.stat().st_size


def test_tiny_model_view_reads_the_converted_config() -> None:
    model = read_local_gguf(make_tiny_gguf()).model
    assert (model.architecture, model.block_count, model.embedding_length, model.feed_forward_length) == (
        "llama", 2, 64, 128
    )
    assert (model.head_count, model.head_count_kv, model.key_length, model.value_length) == (4, 2, 16, 16)
    assert model.vocab_size == 512 and model.context_length == 2048
    assert model.quantization == "F16" and model.sliding_window is None and not model.is_mla
    assert check_architecture(model) is model


def test_tiny_q4_k_m_falls_back_per_tensor_and_the_header_says_so() -> None:
    # 64- and 128-wide rows are not multiples of Q4_K's 256-value blocks: llama-quantize falls back to Q5_0
    # and Q8_0 per tensor (and logs 6.49 BPW) while general.file_type still names Q4_K_M
    header = read_local_gguf(make_tiny_gguf_quantized(quant="Q4_K_M"))
    assert header.model.quantization == "Q4_K_M"
    assert {t.ggml_type for t in header.tensors} == {"F32", "Q5_0", "Q8_0"}
    assert header_bits_per_weight(header) == pytest.approx(6.49, abs=0.01)
    assert header_bits_per_weight(read_local_gguf(make_tiny_gguf())) == pytest.approx(16.04, abs=0.01)


def test_ggml_type_table_matches_gguf_py(gguf_py) -> None:
    sizes = gguf_py.GGML_QUANT_SIZES
    assert {t.name: (t.block_size, t.type_size) for t in GGML_TYPES.values()} == {
        kind.name: sizes[kind] for kind in sizes
    }
    assert {t.type_id: t.name for t in GGML_TYPES.values()} == {
        kind.value: kind.name for kind in gguf_py.GGMLQuantizationType
    }


def test_file_type_names_match_gguf_py(gguf_py) -> None:
    for kind in gguf_py.LlamaFileType:
        if kind.name == "GUESSED":
            continue
        name = quant_from_file_type(kind.value)
        assert name is not None
        assert name.replace("_MOE", "") == kind.name.removeprefix("MOSTLY_").removeprefix("ALL_").replace("_MOE", "")


# RANGE READS


def test_only_a_small_prefix_of_a_big_file_is_read() -> None:
    tokens = [f"tok{i}" for i in range(200_000)]
    types = Typed("array", [1] * 200_000, "int32")
    meta = {**TINY, "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}
    tensors = [(f"blk.{i}.ffn_up.weight", (8192, 28672), "Q4_K") for i in range(80)]  # 10 GB of Q4_K
    header, data = gguf_bytes(meta, tensors)
    file_size = len(header) + data
    log: list[tuple[int, int]] = []
    parsed = read_gguf_header(read_at=_reader(header, log), file="big.gguf", file_size=file_size)
    assert isinstance(parsed.metadata["tokenizer.ggml.tokens"], GgufArraySummary)
    assert len(parsed.metadata["tokenizer.ggml.tokens"]) == 200_000
    assert parsed.model.vocab_size == 200_000
    assert parsed.tensors[0].nbytes == 8192 * 28672 // 256 * 144 and file_size > 10**10
    read = sum(length for _, length in log)
    assert len(header) > FIRST_READ_BYTES  # the header alone needs more than one read
    assert read < 2 * len(header) + FIRST_READ_BYTES  # grown by doubling, never the tensor data
    assert max(offset + length for offset, length in log) < 2 * len(header) < file_size // 1000


def test_a_small_header_takes_one_read() -> None:
    header, data = gguf_bytes(TINY, [("token_embd.weight", (64, 512), "F16")])
    log: list[tuple[int, int]] = []
    read_gguf_header(read_at=_reader(header, log), file="x.gguf", file_size=len(header) + data)
    assert len(log) == 1 and log[0][0] == 0


def test_a_short_read_is_a_truncated_header() -> None:
    header, _ = gguf_bytes({**TINY, "x": "y" * 5000}, [("token_embd.weight", (64, 512), "F16")])

    def short(offset: int, length: int) -> bytes:
        return header[offset : offset + min(length, 100)]

    with pytest.raises(InvalidGgufError, match=r"'x\.gguf' is a truncated GGUF header: the file ends at byte 100"):
        read_gguf_header(read_at=short, file="x.gguf")


# HOSTILE AND BROKEN HEADERS


def _tiny_blob() -> bytes:
    return make_tiny_gguf().read_bytes()


def test_truncation_anywhere_in_the_header_names_the_file_and_offset() -> None:
    blob = _tiny_blob()
    header_end = read_local_gguf(make_tiny_gguf()).data_offset
    for cut in [*range(0, 64), *range(64, header_end, 97), header_end - 1]:
        # inside the padding before the data, every info has been read: then the tensor sizes tell
        expected = r"is a truncated GGUF header.*offset \d+" if cut < header_end - 32 else "tensors end at byte"
        with pytest.raises(InvalidGgufError, match=r"'model\.gguf' .*" + expected) as caught:
            _parse(blob[:cut], file_size=cut)
        assert "fetch" in str(caught.value)


def test_a_file_cut_inside_its_tensor_data_is_caught_from_its_size() -> None:
    blob = _tiny_blob()
    with pytest.raises(InvalidGgufError, match="tensors end at byte 292992 but the file has 20000 bytes"):
        _parse(blob[:20000], file_size=20000)


def _header(*, version: int = 3, n_tensors: int = 0, n_kv: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<Iqq", version, n_tensors, n_kv)


def _kv(key: str, value_type: int, payload: bytes) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<i", value_type) + payload


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"GGML" + b"\0" * 32, "starts with b'GGML', not b'GGUF'"),
        (_header(version=1), "version 1, which llama.cpp no longer loads"),
        (_header(version=4), "GGUF version is 4"),
        (b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, "big-endian GGUF"),
        (_header(n_tensors=1 << 40), "tensor count 1099511627776 is out of range"),
        (_header(n_tensors=-1), "tensor count -1 is out of range"),
        (_header(n_kv=1 << 30), "key/value count 1073741824 is out of range"),
        (_header(n_kv=1) + struct.pack("<Q", 1 << 40), "claims 1099511627776 bytes"),
        (_header(n_kv=1) + _kv("a", 13, b""), "'a' has value type 13, which GGUF does not define"),
        (_header(n_kv=1) + _kv("a", 9, struct.pack("<iQ", 99, 1)), "array of value type 99"),
        (_header(n_kv=1) + _kv("a", 9, struct.pack("<iQ", 4, 1 << 40)), "claims 1099511627776 elements"),
        (_header(n_kv=1) + _kv("a", 9, struct.pack("<iQ", 4, 1 << 22)), "ends at byte 49 while reading the 4194304"),
        (_header(n_kv=1) + _kv("a", 8, struct.pack("<Q", 1000) + b"abc"), "truncated GGUF header"),
        (_header(n_kv=2) + _kv("a", 4, b"\1\0\0\0") + _kv("a", 4, b"\1\0\0\0"), "key 'a' appears twice"),
        (_header(n_kv=1) + _kv("", 4, b"\1\0\0\0"), "empty name"),
        (_header(n_kv=1) + _kv("general.alignment", 4, struct.pack("<I", 48)), "not a power of two"),
        (_header(n_kv=1) + _kv("general.alignment", 8, struct.pack("<Q", 2) + b"32"), "not a power of two"),
    ],
)
def test_hostile_headers_are_refused_with_what_is_wrong(blob: bytes, message: str) -> None:
    with pytest.raises(InvalidGgufError, match=re.escape(message)) as caught:
        _parse(blob, file_size=len(blob))
    assert "'model.gguf'" in str(caught.value)


def _one_tensor(name: str, dims: list[int], type_id: int, offset: int = 0) -> bytes:
    raw = name.encode()
    shape = b"".join(struct.pack("<q", d) for d in dims)
    info = struct.pack("<Q", len(raw)) + raw + struct.pack("<I", len(dims)) + shape
    return _header(n_tensors=1) + info + struct.pack("<iQ", type_id, offset)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_one_tensor("w", [64], 99), "ggml type 99, which llama.cpp b11312 does not know"),
        (_one_tensor("w", [64], 31), "ggml type 31 (Q4_0_4_4), which llama.cpp no longer loads"),
        (_one_tensor("w", [1, 1, 1, 1, 1], 0), "has 5 dimensions"),
        (_one_tensor("w", [64, -2], 0), "negative dimension"),
        (_one_tensor("w", [48], 12), "rows of 48 are not a multiple of Q4_K's block size"),
        (_one_tensor("w" * 64, [64], 0), "name of 64 characters"),
        (_one_tensor("w", [64], 0, offset=32), "data offset 32, expected 0"),
        (_one_tensor("w", [1 << 32, 1 << 32], 0), "too many to address"),
    ],
)
def test_hostile_tensor_infos_are_refused(blob: bytes, message: str) -> None:
    with pytest.raises(InvalidGgufError, match=re.escape(message)):
        _parse(blob)


def test_duplicate_tensor_names_are_refused() -> None:
    blob, _ = gguf_bytes(TINY, [("a", (32,), "F32"), ("a", (32,), "F32")])
    with pytest.raises(InvalidGgufError, match="tensor 'a' appears twice"):
        _parse(blob)


def test_the_header_cap_stops_a_header_that_never_ends() -> None:
    blob, _ = gguf_bytes({**TINY, "big": "x" * 3_000_000}, [])
    with pytest.raises(InvalidGgufError, match="needs more than 2 MiB"):
        _parse(blob, max_header_bytes=2 << 20)
    assert _parse(blob).metadata["big"] == "x" * 3_000_000
    # a count that cannot fit under the cap is refused before it is looped over
    endless = _header(n_kv=1) + _kv("a", 9, struct.pack("<iQ", 8, 1 << 23))
    with pytest.raises(InvalidGgufError, match="the 8388608 elements of 'a' cannot fit in the 2 MiB"):
        _parse(endless, max_header_bytes=2 << 20)


def test_every_value_type_and_nested_arrays_are_read() -> None:
    meta: dict[str, object] = {
        **TINY,
        "u8": Typed("uint8", 255), "i8": Typed("int8", -3), "u16": Typed("uint16", 65535), "i16": Typed("int16", -7),
        "u32": Typed("uint32", 1 << 31), "i32": Typed("int32", -(1 << 31)), "u64": Typed("uint64", 1 << 60),
        "i64": Typed("int64", -(1 << 60)), "f32": 0.5, "f64": Typed("float64", 0.1), "flag": True, "s": "héllo",
        "layers": Typed("array", [True, False, True], "bool"),
        "nested": Typed("array", [Typed("array", [1, 2], "int32"), Typed("array", ["a"], "string")], "array"),
        "long": Typed("array", list(range(5000)), "int32"),
    }
    header = _parse(gguf_bytes(meta, [])[0])
    got = header.metadata
    assert (got["u8"], got["i8"], got["u16"], got["i16"]) == (255, -3, 65535, -7)
    assert (got["u32"], got["i32"], got["u64"], got["i64"]) == (1 << 31, -(1 << 31), 1 << 60, -(1 << 60))
    assert got["f32"] == 0.5 and got["f64"] == 0.1 and got["flag"] is True and got["s"] == "héllo"
    assert got["layers"] == (True, False, True)
    assert got["nested"] == ((1, 2), ("a",))
    assert got["long"] == GgufArraySummary("int32", 5000)
    assert header.tensors == () and header.data_offset == len(gguf_bytes(meta, [])[0])


def test_version_2_files_are_read() -> None:
    blob, _ = gguf_bytes(TINY, [("token_embd.weight", (64, 8), "F32")], version=2)
    assert _parse(blob).version == 2


def test_a_missing_local_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidGgufError, match="Could not read"):
        read_local_gguf(tmp_path / "absent.gguf")


# MODEL VIEW


def _model(arch: str, extra: dict[str, object], *, layers: int = 12):
    meta = {"general.architecture": arch, f"{arch}.block_count": layers, f"{arch}.embedding_length": 256,
            f"{arch}.attention.head_count": 4, **extra}
    return _parse(gguf_bytes(meta, [])[0]).model


def test_sliding_window_layers_follow_each_architectures_rule() -> None:
    gemma3 = _model("gemma3", {"gemma3.attention.sliding_window": 1024})
    assert gemma3.sliding_window == 1024
    assert [il for il in range(12) if not gemma3.is_swa_layer(il)] == [5, 11]  # every 6th is global
    assert _model("gemma3", {}).sliding_window is None  # no window key: no SWA (gemma3.cpp:2-10)
    gemma2 = _model("gemma2", {})
    assert gemma2.sliding_window == 4096 and gemma2.swa_layers == (True, False) * 6
    cohere = _model("cohere2moe", {"cohere2moe.attention.sliding_window": 4096})
    assert [il for il in range(12) if not cohere.is_swa_layer(il)] == [0, 4, 8]  # dense first
    llama4 = _model("llama4", {})
    assert llama4.sliding_window == 8192 and llama4.swa_chunked
    assert _model("llama4", {"llama4.attention.sliding_window": 0}).sliding_window is None
    explicit = _model("gemma4", {"gemma4.attention.sliding_window": 512,
                                 "gemma4.attention.sliding_window_pattern": [True, True, False] * 4})
    assert explicit.swa_layers == (True, True, False) * 4
    # a window in the file means nothing for architectures llama.cpp runs with full attention
    assert _model("qwen2", {"qwen2.attention.sliding_window": 4096}).sliding_window is None
    assert _model("phi3", {"phi3.attention.sliding_window": 2047}).sliding_window is None


def test_per_layer_heads_key_lengths_and_latent_attention() -> None:
    model = _model("llama", {"llama.attention.head_count_kv": [8] * 6 + [0] * 6, "llama.attention.key_length": 128})
    assert model.head_count_kv_at(0) == 8 and model.head_count_kv_at(11) == 0
    assert model.key_length == 128 and model.value_length == 64  # value length defaults to n_embd / n_head
    mla = _model("deepseek2", {"deepseek2.attention.key_length_mla": 192, "deepseek2.attention.value_length_mla": 128})
    assert mla.is_mla
    gemma4 = _model("gemma4", {"gemma4.attention.shared_kv_layers": 4, "gemma4.attention.sliding_window": 512,
                               "gemma4.attention.sliding_window_pattern": [True] * 12})
    assert [il for il in range(12) if gemma4.has_kv(il)] == list(range(8))
    mtp = _model("glm4moe", {"glm4moe.nextn_predict_layers": 1})
    assert mtp.n_layer == 11 and not mtp.has_kv(11)


def test_a_file_without_architecture_is_not_a_model() -> None:
    with pytest.raises(InvalidGgufError, match=r"no general\.architecture"):
        _ = _parse(gguf_bytes({"general.type": "adapter"}, [])[0]).model


def test_quantization_falls_back_to_the_tensor_types() -> None:
    blob, _ = gguf_bytes(TINY, [("a", (256,), "Q4_K"), ("b", (256,), "Q4_K"), ("c", (32,), "F32")])
    assert _parse(blob).model.quantization == "Q4_K_M"  # what llama.cpp guesses (llama-model-loader.cpp:752-780)
    assert _model("llama", {"general.file_type": 15}).quantization == "Q4_K_M"
    assert _model("llama", {"general.file_type": 1024 | 7}).quantization == "Q8_0"


# QUANTIZATION NAMES


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("qwen2.5-7b-instruct-q4_k_m.gguf", "Q4_K_M"),
        ("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("gemma-3-4b-it-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("gemma-3-27b-it-UD-IQ1_S.gguf", "UD-IQ1_S"),
        ("Qwen2.5-72B-Instruct-Q8_0/Qwen2.5-72B-Instruct-Q8_0-00001-of-00002.gguf", "Q8_0"),
        ("Q8_0/model-00001-of-00003.gguf", "Q8_0"),
        ("llama-2-7b.Q5_K_S.gguf", "Q5_K_S"),
        ("mistral-7b-instruct-v0.2.Q3_K_L.gguf", "Q3_K_L"),
        ("model-q4-k-m.gguf", "Q4_K_M"),
        ("Phi-3-mini-4k-instruct-fp16.gguf", "F16"),
        ("model-bf16.gguf", "BF16"),
        ("model-f32.gguf", "F32"),
        ("DeepSeek-R1-IQ2_XXS.gguf", "IQ2_XXS"),
        ("m-IQ3_XS.gguf", "IQ3_XS"), ("m-IQ3_M.gguf", "IQ3_M"), ("m-IQ4_XS.gguf", "IQ4_XS"),
        ("m-IQ4_NL.gguf", "IQ4_NL"), ("m-IQ2_M.gguf", "IQ2_M"), ("m-IQ1_M.gguf", "IQ1_M"),
        ("m-Q2_K.gguf", "Q2_K"), ("m-Q4_0.gguf", "Q4_0"), ("m-Q4_1.gguf", "Q4_1"), ("m-Q5_0.gguf", "Q5_0"),
        ("m-Q5_1.gguf", "Q5_1"), ("m-Q5_K_M.gguf", "Q5_K_M"), ("m-Q6_K.gguf", "Q6_K"), ("m-Q6_K_L.gguf", "Q6_K_L"),
        ("m-TQ1_0.gguf", "TQ1_0"), ("m-TQ2_0.gguf", "TQ2_0"), ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
        ("gpt-oss-120b-mxfp4-00001-of-00003.gguf", "MXFP4"),
        ("Qwen2.5-7B-Instruct.gguf", None),
        ("mmproj-model-f16.gguf", "F16"),
    ],
)
def test_quant_names_from_file_names(name: str, quant: str | None) -> None:
    assert quant_from_filename(name) == quant


def test_bits_per_weight_order_quantizations() -> None:
    names = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "IQ4_XS", "Q3_K_M", "Q2_K", "IQ1_S"]
    figures = [bits_per_weight(n) for n in names]
    assert all(f is not None for f in figures)
    assert figures == sorted(figures, reverse=True)  # type: ignore[type-var]
    assert bits_per_weight("Q4_K_M") == pytest.approx(4.9, abs=0.02)  # 4.58 GiB for Llama-3-8B (quantize.cpp:64)
    assert bits_per_weight("UD-Q4_K_XL") == bits_per_weight("Q4_K_M")
    assert bits_per_weight("nonsense") is None


# SPLIT AND GROUPED FILES


def test_repo_listing_groups_into_variants_and_projectors() -> None:
    listing = group_gguf_files(
        [
            ("README.md", 100),
            ("Qwen2.5-72B-Instruct-Q4_K_M.gguf", 47_000),
            ("Qwen2.5-72B-Instruct-Q8_0/Qwen2.5-72B-Instruct-Q8_0-00002-of-00002.gguf", 30_000),
            ("Qwen2.5-72B-Instruct-Q8_0/Qwen2.5-72B-Instruct-Q8_0-00001-of-00002.gguf", 47_000),
            ("mmproj-Qwen2.5-VL-f16.gguf", 1_300),
            ("Qwen2.5-72B-Instruct-IQ2_XXS.gguf", 25_000),
        ]
    )
    assert [(v.quant, v.split_count, v.total_size) for v in listing.variants] == [
        ("IQ2_XXS", 1, 25_000), ("Q4_K_M", 1, 47_000), ("Q8_0", 2, 77_000)
    ]
    q8 = listing.by_quant("q8_0")[0]
    assert [f.path.rsplit("/", 1)[1] for f in q8.files] == [
        "Qwen2.5-72B-Instruct-Q8_0-00001-of-00002.gguf", "Qwen2.5-72B-Instruct-Q8_0-00002-of-00002.gguf"
    ]
    assert q8.complete and q8.first_file.endswith("-00001-of-00002.gguf") and require_complete(q8) is q8
    assert [p.path for p in listing.projectors] == ["mmproj-Qwen2.5-VL-f16.gguf"]


def test_a_split_set_with_a_missing_part_is_incomplete_and_named() -> None:
    listing = group_gguf_files([("m-Q4_K_M-00001-of-00003.gguf", 10), ("m-Q4_K_M-00003-of-00003.gguf", 10)])
    (variant,) = listing.variants
    assert not variant.complete and variant.missing == ("m-Q4_K_M-00002-of-00003.gguf",)
    with pytest.raises(InvalidGgufError, match=r"has 2 of its 3 parts; missing: m-Q4_K_M-00002-of-00003\.gguf"):
        require_complete(variant)


def test_same_quant_of_different_models_stays_distinct() -> None:
    listing = group_gguf_files([("a/model-Q4_K_M.gguf", 5), ("b/model-Q4_K_M.gguf", 6), ("other-Q4_K_M.gguf", 7)])
    assert sorted(v.key for v in listing.by_quant("Q4_K_M")) == ["a/model-Q4_K_M", "b/model-Q4_K_M", "other-Q4_K_M"]


# ARCHITECTURES


def _names_in(path: Path, pattern: str) -> set[str]:
    return set(re.findall(pattern, path.read_text(encoding="utf-8")))


def test_architecture_list_is_what_the_pinned_source_can_build() -> None:
    source = llama_cpp_source(fetch=False) / "src"
    arch_cpp = (source / "llama-arch.cpp").read_text(encoding="utf-8")
    table = arch_cpp[arch_cpp.index("LLM_ARCH_NAMES = {") : arch_cpp.index("};", arch_cpp.index("LLM_ARCH_NAMES"))]
    named = dict(re.findall(r"\{\s*(LLM_ARCH_\w+),\s*\"([^\"]+)\"\s*\}", table))
    model_cpp = (source / "llama-model.cpp").read_text(encoding="utf-8")
    mapping = model_cpp[model_cpp.index("llama_model_mapping(") : model_cpp.index("llama_model * llama_model_create(")]
    built = set(re.findall(r"case (LLM_ARCH_\w+):", mapping)) - {"LLM_ARCH_CLIP"}
    assert {named[arch] for arch in built} == LLAMA_CPP_ARCHITECTURES
    assert "gptj" not in LLAMA_CPP_ARCHITECTURES and "gptj" in named.values()  # named, but no model in b11312


def test_unknown_architectures_and_projectors_are_refused() -> None:
    with pytest.raises(InvalidGgufError, match=r"'mystery' is not one llama.cpp b11312 can run.*vLLM or transformers"):
        check_architecture(_model("mystery", {}))
    with pytest.raises(InvalidGgufError, match="multimodal projector"):
        check_architecture(_model("clip", {}))
