"""Read what a GGUF file holds from its header alone, and name what a hub repo of GGUF files offers.

GGUF layout (ggml/src/gguf.cpp:430-800, gguf-py/gguf/constants.py:10-12), all little-endian:
magic "GGUF", u32 version, i64 tensor count, i64 key/value count, the key/values (string key, i32 value
type, value), the tensor infos (string name, u32 n_dims, i64 dims, i32 ggml type, u64 offset), then padding
to ``general.alignment`` (default 32) and the tensor data. Strings are a u64 length plus bytes; an array
value is an i32 element type, a u64 count and the elements. Version 2 and 3 share this layout (3 added
big-endian files); version 1 used 32-bit counts and llama.cpp refuses it (gguf.cpp:496).

The header is read through ``read_at(offset, length)``: an HTTP Range read on a hub or a file read. It asks
for 1 MiB first and doubles, never for tensor data; tokenizer arrays of 150k-260k strings make headers a few
MB. Every count and length is capped, so a hostile or broken file fails with a clear message instead of an
allocation or a long loop.

Facts are those of llama.cpp build b11312 (``core.engines.versions.LLAMA_CPP_BUILD``); file:line cites are
paths in that tree (``core.llamacpp_source.llama_cpp_source()``).
"""

from __future__ import annotations

import math
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TypeAlias

from core.errors import InvalidGgufError

ReadAt: TypeAlias = Callable[[int, int], bytes]

GGUF_MAGIC = b"GGUF"  # ggml/include/gguf.h:41
GGUF_SUPPORTED_VERSIONS = (2, 3)  # gguf.h:42 GGUF_VERSION 3; gguf.cpp:496 refuses 1
GGUF_DEFAULT_ALIGNMENT = 32  # gguf.h:46
GGML_MAX_DIMS = 4  # ggml/include/ggml.h:222
GGML_MAX_NAME = 64  # ggml.h:229; gguf.cpp:681 refuses tensor names of 64 bytes or more

#: first range read; most headers without a big tokenizer fit, the rest grows by doubling
FIRST_READ_BYTES = 1 << 20
#: the whole header (key/values + tensor infos) may not exceed this; real ones are a few MB
MAX_HEADER_BYTES = 256 << 20
MAX_TENSORS = 1 << 20
MAX_KEY_VALUES = 1 << 16
#: the longest tokenizer arrays hold ~260k tokens, merges ~500k
MAX_ARRAY_LENGTH = 1 << 24
#: chat templates are ~100 KB; some files embed a whole tokenizer.json of tens of MB
MAX_STRING_BYTES = 64 << 20
MAX_ARRAY_DEPTH = 8
#: arrays this long or shorter are kept in full (per-layer arrays have at most LLAMA_MAX_LAYERS = 512
#: entries, src/llama-hparams.h:11); longer ones are summarized as their element type and length
MAX_KEPT_ARRAY_LENGTH = 1024


# GGML TYPES


@dataclass(frozen=True)
class GgmlType:
    """One ggml tensor type: ``block_size`` elements are stored in ``type_size`` bytes."""

    type_id: int
    name: str
    block_size: int
    type_size: int

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    def row_bytes(self, n_elements: int) -> int:
        """Bytes of ``n_elements`` consecutive values (ggml_row_size, ggml/src/ggml.c:1339)."""
        return self.type_size * n_elements // self.block_size


_QK_K = 256  # ggml/src/ggml-common.h:89
# id, name, block size, bytes per block: ggml/include/ggml.h:389-434 (ids) and the block structs behind
# type_traits in ggml/src/ggml.c:632-925; gguf-py/gguf/constants.py:5958-5994 (GGML_QUANT_SIZES) lists the same.
_GGML_TYPE_ROWS: tuple[tuple[int, str, int, int], ...] = (
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 2 + 16),
    (3, "Q4_1", 32, 2 + 2 + 16),
    (6, "Q5_0", 32, 2 + 4 + 16),
    (7, "Q5_1", 32, 2 + 2 + 4 + 16),
    (8, "Q8_0", 32, 2 + 32),
    (9, "Q8_1", 32, 2 + 2 + 32),
    (10, "Q2_K", 256, 2 + 2 + _QK_K // 16 + _QK_K // 4),
    (11, "Q3_K", 256, 2 + _QK_K // 4 + _QK_K // 8 + 12),
    (12, "Q4_K", 256, 2 + 2 + _QK_K // 2 + 12),
    (13, "Q5_K", 256, 2 + 2 + _QK_K // 2 + _QK_K // 8 + 12),
    (14, "Q6_K", 256, 2 + _QK_K // 2 + _QK_K // 4 + _QK_K // 16),
    (15, "Q8_K", 256, 4 + _QK_K + _QK_K // 8),
    (16, "IQ2_XXS", 256, 2 + _QK_K // 4),
    (17, "IQ2_XS", 256, 2 + _QK_K // 4 + _QK_K // 32),
    (18, "IQ3_XXS", 256, 2 + _QK_K // 4 + _QK_K // 8),
    (19, "IQ1_S", 256, 2 + _QK_K // 8 + _QK_K // 16),
    (20, "IQ4_NL", 32, 2 + 16),
    (21, "IQ3_S", 256, 2 + _QK_K // 4 + _QK_K // 8 + _QK_K // 32 + 4),
    (22, "IQ2_S", 256, 2 + _QK_K // 4 + _QK_K // 16),
    (23, "IQ4_XS", 256, 2 + 2 + _QK_K // 2 + _QK_K // 64),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, _QK_K // 8 + _QK_K // 16 + _QK_K // 32),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 2 + 4 * 13),
    (35, "TQ2_0", 256, 2 + 64),
    (39, "MXFP4", 32, 1 + 16),
    (40, "NVFP4", 64, 4 + 32),
    (41, "Q1_0", 128, 2 + 16),
    (42, "Q2_0", 64, 2 + 16),
)
GGML_TYPES: Mapping[int, GgmlType] = MappingProxyType({row[0]: GgmlType(*row) for row in _GGML_TYPE_ROWS})
GGML_TYPES_BY_NAME: Mapping[str, GgmlType] = MappingProxyType({t.name: t for t in GGML_TYPES.values()})
#: ids that once existed and that b11312 no longer loads (ggml.h:394-395, 421-423, 426-428)
REMOVED_GGML_TYPES: Mapping[int, str] = MappingProxyType(
    {4: "Q4_2", 5: "Q4_3", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8", 36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8",
     38: "IQ4_NL_8_8"}
)


def ggml_type(name: str) -> GgmlType:
    """The ggml type called ``name`` (case-insensitive: "q8_0", "F16")."""
    try:
        return GGML_TYPES_BY_NAME[name.upper()]
    except KeyError:
        raise InvalidGgufError(
            f"'{name}' is not a ggml tensor type of llama.cpp b11312.",
            hint="Use one of: " + ", ".join(GGML_TYPES_BY_NAME) + ".",
        ) from None


# GGUF METADATA VALUE TYPES (gguf-py/gguf/constants.py:5864-5877, ggml/src/gguf.cpp:94-108)

_VALUE_UINT8, _VALUE_INT8, _VALUE_UINT16, _VALUE_INT16, _VALUE_UINT32, _VALUE_INT32 = 0, 1, 2, 3, 4, 5
_VALUE_FLOAT32, _VALUE_BOOL, _VALUE_STRING, _VALUE_ARRAY, _VALUE_UINT64, _VALUE_INT64, _VALUE_FLOAT64 = (
    6, 7, 8, 9, 10, 11, 12
)
_VALUE_TYPE_NAMES = {
    0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
    8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64",
}
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class GgufArraySummary:
    """A metadata array too long to keep (a tokenizer's tokens or merges): what it holds and how many."""

    element_type: str  # "string", "int32", "float32", "array", ...
    length: int

    def __len__(self) -> int:
        return self.length


MetadataValue: TypeAlias = "int | float | bool | str | tuple[MetadataValue, ...] | GgufArraySummary"


# HEADER


@dataclass(frozen=True)
class GgufTensor:
    """One tensor's info. ``shape`` is in ggml order: ``shape[0]`` is the row length (HF's last dimension)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    offset: int  # from the start of the data section (GgufHeader.data_offset)
    nbytes: int  # exact: rows × row bytes of the type's blocks (ggml_nbytes, ggml/src/ggml.c:1298)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def layer(self) -> int | None:
        """The repeating layer ``blk.N.`` this tensor belongs to, else None (input/output tensors)."""
        match = _BLOCK_TENSOR.match(self.name)
        return int(match.group(1)) if match else None


_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class GgufHeader:
    file: str
    version: int
    metadata: Mapping[str, MetadataValue]
    tensors: tuple[GgufTensor, ...]
    alignment: int
    data_offset: int  # where the tensor data starts in the file (aligned)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @cached_property
    def model(self) -> GgufModel:
        return GgufModel.from_header(self)


class _Cursor:
    """Sequential reads over a growing prefix of the file, fetched by ``read_at``."""

    def __init__(self, read_at: ReadAt, *, file: str, file_size: int | None, max_bytes: int) -> None:
        self._read_at = read_at
        self._file = file
        self._limit = max_bytes if file_size is None else min(max_bytes, file_size)
        self._file_size = file_size
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._eof = False
        self.pos = 0

    def _need(self, n: int, what: str) -> None:
        end = self.pos + n
        if end <= len(self._buffer):
            return
        if end > self._max_bytes:
            raise _broken(
                self._file,
                f"its header needs more than {self._max_bytes >> 20} MiB (reading {what} at offset {self.pos})",
                hint="A real GGUF header is a few MB; the file is damaged or not a model.",
            )
        while len(self._buffer) < end and not self._eof:
            have = len(self._buffer)
            want = min(max(end - have, have, FIRST_READ_BYTES), self._limit - have)
            if want <= 0:
                self._eof = True
                break
            chunk = self._read_at(have, want)[:want]
            self._buffer += chunk
            if len(chunk) < want:
                self._eof = True
        if len(self._buffer) < end:
            raise _truncated(self._file, what=what, offset=self.pos, size=len(self._buffer))

    def take(self, n: int, what: str) -> bytes:
        self._need(n, what)
        data = bytes(self._buffer[self.pos : self.pos + n])
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self._need(n, what)
        self.pos += n

    def unpack(self, fmt: str, what: str) -> int | float:
        size = struct.calcsize(fmt)
        self._need(size, what)
        (value,) = struct.unpack_from(fmt, self._buffer, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", what))

    def i32(self, what: str) -> int:
        return int(self.unpack("<i", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", what))

    def i64(self, what: str) -> int:
        return int(self.unpack("<q", what))

    def string_length(self, what: str, *, limit: int = MAX_STRING_BYTES) -> int:
        length = self.u64(what)
        if length > limit:
            raise _broken(self._file, f"{what} claims {length} bytes (more than the {limit} allowed)")
        return length

    def string(self, what: str, *, limit: int = MAX_STRING_BYTES) -> str:
        return self.take(self.string_length(what, limit=limit), what).decode("utf-8", errors="replace")

    def check_room(self, n: int, what: str) -> None:
        """Refuse a count whose smallest encoding (``n`` bytes) cannot fit before looping over it."""
        if self.pos + n <= self._limit:
            return
        if self._file_size is not None and self._file_size <= self._max_bytes:
            raise _truncated(self._file, what=what, offset=self.pos, size=self._file_size)
        raise _broken(
            self._file,
            f"{what} cannot fit in the {self._max_bytes >> 20} MiB a header may take (offset {self.pos})",
            hint="A real GGUF header is a few MB; the file is damaged or not a model.",
        )


def read_gguf_header(
    *, read_at: ReadAt, file: str, file_size: int | None = None, max_header_bytes: int = MAX_HEADER_BYTES
) -> GgufHeader:
    """Parse a GGUF header through range reads; ``file`` names it in errors. Never reads tensor data."""
    cursor = _Cursor(read_at, file=file, file_size=file_size, max_bytes=max_header_bytes)
    magic = cursor.take(4, "the magic")
    if magic != GGUF_MAGIC:
        raise _broken(file, f"it starts with {magic!r}, not b'GGUF'", hint="Pick a .gguf model file.")
    version = cursor.u32("the version")
    if version == 1:
        raise _broken(
            file,
            "it is GGUF version 1, which llama.cpp no longer loads (ggml/src/gguf.cpp:496)",
            hint="Use a newer conversion of this model (GGUF version 2 or 3).",
        )
    if version & 0xFFFF == 0 and version != 0:
        raise _broken(file, f"its version field reads {version:#x}: it is a big-endian GGUF", hint=_LITTLE_HINT)
    if version not in GGUF_SUPPORTED_VERSIONS:
        raise _broken(file, f"its GGUF version is {version}; llama.cpp b11312 reads versions 2 and 3")
    n_tensors = cursor.i64("the tensor count")
    n_kv = cursor.i64("the key/value count")
    if not 0 <= n_tensors <= MAX_TENSORS:
        raise _broken(file, f"its tensor count {n_tensors} is out of range (0-{MAX_TENSORS})")
    if not 0 <= n_kv <= MAX_KEY_VALUES:
        raise _broken(file, f"its key/value count {n_kv} is out of range (0-{MAX_KEY_VALUES})")

    metadata: dict[str, MetadataValue] = {}
    for index in range(n_kv):
        key = cursor.string(f"the name of key/value {index}", limit=1 << 16)
        if not key:
            raise _broken(file, f"key/value {index} has an empty name")
        if key in metadata:
            raise _broken(file, f"key '{key}' appears twice")
        value_type = cursor.i32(f"the type of '{key}'")
        metadata[key] = _read_value(cursor, value_type, key=key, depth=0, file=file)

    alignment = GGUF_DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        raw = metadata["general.alignment"]
        # it must be a u32 (gguf.cpp:631); bool is an int in Python, so rule it out explicitly
        if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0 or raw & (raw - 1):
            raise _broken(file, f"its general.alignment {raw!r} is not a power of two")
        alignment = raw

    tensors = _read_tensor_infos(cursor, n_tensors, alignment=alignment, file=file)
    data_offset = _pad(cursor.pos, alignment) if tensors else cursor.pos
    if file_size is not None and tensors:
        last = tensors[-1]
        end = data_offset + last.offset + last.nbytes
        if end > file_size:
            raise _broken(
                file,
                f"its tensors end at byte {end} but the file has {file_size} bytes",
                hint="The download is incomplete: fetch the file again.",
            )
    return GgufHeader(
        file=file,
        version=version,
        metadata=MappingProxyType(metadata),
        tensors=tuple(tensors),
        alignment=alignment,
        data_offset=data_offset,
    )


def read_local_gguf(path: Path) -> GgufHeader:
    """Read only the header of a local GGUF file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:

            def read_at(offset: int, length: int) -> bytes:
                handle.seek(offset)
                return handle.read(length)

            return read_gguf_header(read_at=read_at, file=path.name, file_size=size)
    except OSError as error:
        raise InvalidGgufError(
            f"Could not read '{path}': {error.strerror or error}.", hint="Check that the file exists and is readable."
        ) from error


def _read_value(cursor: _Cursor, value_type: int, *, key: str, depth: int, file: str) -> MetadataValue:
    if value_type in _SCALAR_FORMATS:
        value = cursor.unpack(_SCALAR_FORMATS[value_type], f"the value of '{key}'")
        return bool(value) if value_type == _VALUE_BOOL else value
    if value_type == _VALUE_STRING:
        return cursor.string(f"the value of '{key}'")
    if value_type == _VALUE_ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise _broken(file, f"'{key}' nests arrays more than {MAX_ARRAY_DEPTH} deep")
        element_type = cursor.i32(f"the element type of '{key}'")
        length = cursor.u64(f"the length of '{key}'")
        return _read_array(cursor, element_type, length, key=key, depth=depth + 1, file=file)
    raise _broken(file, f"'{key}' has value type {value_type}, which GGUF does not define (0-12)")


def _read_array(cursor: _Cursor, element_type: int, length: int, *, key: str, depth: int, file: str) -> MetadataValue:
    if length > MAX_ARRAY_LENGTH:
        raise _broken(file, f"'{key}' claims {length} elements (more than the {MAX_ARRAY_LENGTH} allowed)")
    if element_type not in _VALUE_TYPE_NAMES:
        raise _broken(file, f"'{key}' is an array of value type {element_type}, which GGUF does not define (0-12)")
    # every element takes at least this many bytes: refuse counts that cannot fit before looping over them
    smallest = struct.calcsize(_SCALAR_FORMATS[element_type]) if element_type in _SCALAR_FORMATS else 8
    cursor.check_room(length * smallest, f"the {length} elements of '{key}'")
    keep = length <= MAX_KEPT_ARRAY_LENGTH
    if element_type in _SCALAR_FORMATS:
        size = struct.calcsize(_SCALAR_FORMATS[element_type])
        if not keep:
            cursor.skip(length * size, f"the elements of '{key}'")
            return GgufArraySummary(_VALUE_TYPE_NAMES[element_type], length)
        raw = cursor.take(length * size, f"the elements of '{key}'")
        values = struct.unpack(f"<{length}{_SCALAR_FORMATS[element_type][1]}", raw)
        return tuple(bool(v) for v in values) if element_type == _VALUE_BOOL else tuple(values)
    if element_type == _VALUE_STRING:
        if not keep:
            for index in range(length):
                cursor.skip(cursor.string_length(f"element {index} of '{key}'"), f"element {index} of '{key}'")
            return GgufArraySummary("string", length)
        return tuple(cursor.string(f"element {index} of '{key}'") for index in range(length))
    # nested arrays: gguf-py writes them; llama.cpp's own reader refuses them (gguf.cpp:600-606)
    items = tuple(_read_value(cursor, _VALUE_ARRAY, key=f"{key}[{i}]", depth=depth, file=file) for i in range(length))
    return items if keep else GgufArraySummary("array", length)


def _read_tensor_infos(cursor: _Cursor, n_tensors: int, *, alignment: int, file: str) -> list[GgufTensor]:
    tensors: list[GgufTensor] = []
    seen: set[str] = set()
    expected_offset = 0
    for index in range(n_tensors):
        name = cursor.string(f"the name of tensor {index}", limit=1 << 16)
        if len(name.encode("utf-8")) >= GGML_MAX_NAME:
            raise _broken(file, f"tensor {index} has a name of {len(name)} characters (llama.cpp allows 63)")
        if name in seen:
            raise _broken(file, f"tensor '{name}' appears twice")
        seen.add(name)
        n_dims = cursor.u32(f"the dimension count of '{name}'")
        if n_dims > GGML_MAX_DIMS:
            raise _broken(file, f"tensor '{name}' has {n_dims} dimensions (at most {GGML_MAX_DIMS})")
        shape = tuple(cursor.i64(f"dimension {d} of '{name}'") for d in range(n_dims))
        if any(d < 0 for d in shape):
            raise _broken(file, f"tensor '{name}' has a negative dimension {shape}")
        n_elements = math.prod(shape)
        if n_elements >= 1 << 63:
            raise _broken(file, f"tensor '{name}' has {n_elements} elements, too many to address")
        type_id = cursor.i32(f"the type of '{name}'")
        kind = GGML_TYPES.get(type_id)
        if kind is None:
            if type_id in REMOVED_GGML_TYPES:
                raise _broken(
                    file,
                    f"tensor '{name}' has ggml type {type_id} ({REMOVED_GGML_TYPES[type_id]}), which llama.cpp "
                    "no longer loads",
                    hint="Use a current conversion of this model (such repacked types are made at load time now).",
                )
            raise _broken(
                file,
                f"tensor '{name}' has ggml type {type_id}, which llama.cpp b11312 does not know",
                hint="The file is damaged or needs a newer llama.cpp; pick another quantization.",
            )
        row = shape[0] if shape else 1
        if row % kind.block_size:
            raise _broken(file, f"tensor '{name}' rows of {row} are not a multiple of {kind.name}'s block size")
        offset = cursor.u64(f"the offset of '{name}'")
        nbytes = kind.row_bytes(row) * (n_elements // row) if row else 0
        # llama.cpp requires the tensors to be packed in order, each padded to the alignment (gguf.cpp:789-797)
        if offset != expected_offset:
            raise _broken(file, f"tensor '{name}' has data offset {offset}, expected {expected_offset}")
        expected_offset += _pad(nbytes, alignment)
        tensors.append(GgufTensor(name=name, shape=shape, ggml_type=kind.name, offset=offset, nbytes=nbytes))
    return tensors


def _pad(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


_LITTLE_HINT = "llama.cpp on x86/ARM servers needs a little-endian GGUF; use the usual (non big-endian) file."


def _broken(file: str, why: str, *, hint: str | None = None) -> InvalidGgufError:
    return InvalidGgufError(
        f"'{file}' is not a usable GGUF file: {why}.",
        hint=hint or "Download it again, or pick another file of the model.",
    )


def _truncated(file: str, *, what: str, offset: int, size: int) -> InvalidGgufError:
    return InvalidGgufError(
        f"'{file}' is a truncated GGUF header: the file ends at byte {size} while reading {what} at offset {offset}.",
        hint="The download is incomplete or the file is damaged: fetch it again.",
    )


# MODEL VIEW

# arch -> (default period of load_swa_pattern, dense_first, when SWA applies); "key>0": only when
# {arch}.attention.sliding_window is present and > 0; "always": always; "64 layers": exaone4 32B only.
# From each model's load_arch_hparams in src/models/<arch>.cpp (the file named in the comment).
_SWA_RULES: Mapping[str, tuple[int, bool, str]] = MappingProxyType(
    {
        "gemma2": (2, False, "always"),  # gemma2.cpp:2-4, n_swa defaults to 4096
        "gemma3": (6, False, "key>0"),  # gemma3.cpp:2-7
        "gemma3n": (5, False, "always"),  # gemma3n.cpp:2-3
        "gpt-oss": (2, False, "always"),  # openai-moe.cpp:5-8
        "cohere2": (4, False, "always"),  # cohere2.cpp:2-3
        "cohere2moe": (4, True, "always"),  # cohere2moe.cpp:27-28
        "llama4": (4, False, "llama4"),  # llama4.cpp:6-19 (chunked attention, window forced to 8192)
        "exaone4": (4, False, "64 layers"),  # exaone4.cpp:2-6, n_swa defaults to 4096
        "exaone-moe": (4, False, "always"),  # exaone-moe.cpp:2-4
        "olmo2": (4, False, "key>0"),  # olmo2.cpp:4-7
        "afmoe": (4, False, "key>0"),  # afmoe.cpp:15-17
        "mellum": (4, False, "key>0"),  # mellum.cpp:7-11
        "laguna": (4, True, "key>0"),  # laguna.cpp:35-39
        "muse-glimmer": (4, False, "always"),  # muse-glimmer.cpp:12-13
        "plamo3": (8, False, "key>0"),  # plamo3.cpp:3-7
        "smallthinker": (4, True, "smallthinker"),  # smallthinker.cpp:2-7 (window forced to 4096)
    }
)
#: these read the per-layer pattern array from the file and nothing else (src/models/<arch>.cpp)
_SWA_FROM_ARRAY = frozenset({"gemma4", "gemma4-assistant", "step35", "spark2_5", "mimo2", "granite_swa", "maple"})
#: the sliding-window size some archs use when the file does not say (see _SWA_RULES comments)
_SWA_DEFAULT_WINDOW: Mapping[str, int] = MappingProxyType({"gemma2": 4096, "exaone4": 4096, "exaone-moe": 128})


@dataclass(frozen=True)
class GgufModel:
    """What llama.cpp reads from a model GGUF's metadata to build and size it (src/llama-model.cpp:1300-1470).

    Per-layer quantities are an int when the file stores one value for all layers, else a tuple with one
    entry per layer (llama.cpp's ``get_key_or_arr``); use the ``*_at(layer)`` helpers to read either.
    """

    architecture: str
    name: str | None
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    feed_forward_length: int | tuple[int, ...] | None
    head_count: int | tuple[int, ...] | None
    head_count_kv: int | tuple[int, ...] | None
    key_length: int | None  # default embedding_length / head_count of layer 0 (llama-model.cpp:1437-1441)
    value_length: int | None
    key_length_swa: int | None  # SWA layers' head size (llama-model.cpp:1461-1466), default key_length
    value_length_swa: int | None
    is_mla: bool  # DeepSeek-style latent attention: the cache holds K only (llama-kv-cache.cpp:225-226)
    sliding_window: int | None  # only when llama.cpp really uses SWA for this architecture and file
    swa_layers: tuple[bool, ...] | None  # one flag per layer, None without SWA
    swa_chunked: bool  # llama4's chunked attention (same cache size rule as SWA)
    nextn_predict_layers: int  # trailing MTP layers; the main context has no KV cache for them
    kv_layer_limit: int | None  # layers at or past this reuse earlier layers' cache (gemma3n, gemma4)
    vocab_size: int | None  # tokenizer.ggml.tokens length (what llama.cpp's n_vocab is)
    expert_count: int
    expert_used_count: int | tuple[int, ...]
    file_type: int | None
    quantization: str | None
    split_no: int | None
    split_count: int | None
    split_tensors_count: int | None

    @classmethod
    def from_header(cls, header: GgufHeader) -> GgufModel:
        meta = header.metadata
        arch = meta.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise InvalidGgufError(
                f"'{header.file}' has no general.architecture: it is not a model llama.cpp can load.",
                hint="Pick the model's main .gguf file (not an adapter or a projector).",
            )

        def number(key: str) -> int | None:
            value = meta.get(key)
            return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        def per_layer(key: str) -> int | tuple[int, ...] | None:
            value = meta.get(key)
            if isinstance(value, tuple):
                numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
                return tuple(int(v) for v in numbers) if len(numbers) == len(value) else None
            return number(key)

        block_count = number(f"{arch}.block_count")
        embedding = number(f"{arch}.embedding_length")
        head_count = per_layer(f"{arch}.attention.head_count")
        head_count_kv = per_layer(f"{arch}.attention.head_count_kv")
        if head_count_kv is None:
            head_count_kv = head_count  # llama-model.cpp:1401-1402: n_head_kv defaults to n_head
        head0 = _at(head_count, 0)
        default_head = embedding // head0 if embedding and head0 else None
        key_length = number(f"{arch}.attention.key_length") or default_head
        value_length = number(f"{arch}.attention.value_length") or default_head
        is_mla = bool(number(f"{arch}.attention.key_length_mla")) and bool(number(f"{arch}.attention.value_length_mla"))
        window, swa_layers, chunked = _sliding_window(arch, meta, block_count, number, header.file)
        nextn = number(f"{arch}.nextn_predict_layers") or 0
        kv_limit: int | None = None
        if arch == "gemma3n":
            kv_limit = 20  # gemma3n.cpp:7 (hard-coded)
        elif arch == "gemma4" and block_count is not None:
            kv_limit = block_count - (number(f"{arch}.attention.shared_kv_layers") or 0)  # gemma4.cpp:8-11
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, tuple | GgufArraySummary) else number(f"{arch}.vocab_size")
        file_type = number("general.file_type")
        used = per_layer(f"{arch}.expert_used_count")
        name = meta.get("general.name")
        return cls(
            architecture=arch,
            name=name if isinstance(name, str) else None,
            context_length=number(f"{arch}.context_length"),
            block_count=block_count,
            embedding_length=embedding,
            feed_forward_length=per_layer(f"{arch}.feed_forward_length"),
            head_count=head_count,
            head_count_kv=head_count_kv,
            key_length=key_length,
            value_length=value_length,
            key_length_swa=number(f"{arch}.attention.key_length_swa") or key_length,
            value_length_swa=number(f"{arch}.attention.value_length_swa") or value_length,
            is_mla=is_mla,
            sliding_window=window,
            swa_layers=swa_layers,
            swa_chunked=chunked,
            nextn_predict_layers=nextn,
            kv_layer_limit=kv_limit,
            vocab_size=vocab,
            expert_count=number(f"{arch}.expert_count") or 0,
            expert_used_count=used if used is not None else 0,
            file_type=file_type,
            quantization=quant_from_file_type(file_type) if file_type is not None else _guess_quant(header),
            split_no=number("split.no"),
            split_count=number("split.count"),
            split_tensors_count=number("split.tensors.count"),
        )

    def head_count_at(self, layer: int) -> int:
        return _at(self.head_count, layer) or 0

    def head_count_kv_at(self, layer: int) -> int:
        return _at(self.head_count_kv, layer) or 0

    def feed_forward_length_at(self, layer: int) -> int:
        return _at(self.feed_forward_length, layer) or 0

    def is_swa_layer(self, layer: int) -> bool:
        return bool(self.swa_layers and layer < len(self.swa_layers) and self.swa_layers[layer])

    def key_length_at(self, layer: int) -> int:
        return (self.key_length_swa if self.is_swa_layer(layer) else self.key_length) or 0

    def value_length_at(self, layer: int) -> int:
        return (self.value_length_swa if self.is_swa_layer(layer) else self.value_length) or 0

    @property
    def n_layer(self) -> int:
        """Layers the main model runs (block_count without the MTP layers, src/llama-hparams.cpp:348)."""
        return (self.block_count or 0) - self.nextn_predict_layers

    def has_kv(self, layer: int) -> bool:
        """Whether ``layer`` owns cache cells in the main context (llama-hparams.cpp:321, llama-model.cpp:2800)."""
        if self.nextn_predict_layers and layer >= self.n_layer:
            return False
        return self.kv_layer_limit is None or layer < self.kv_layer_limit


def _at(value: int | tuple[int, ...] | None, layer: int) -> int | None:
    if isinstance(value, tuple):
        return value[layer] if layer < len(value) else None
    return value


def _sliding_window(
    arch: str,
    meta: Mapping[str, MetadataValue],
    block_count: int | None,
    number: Callable[[str], int | None],
    file: str,
) -> tuple[int | None, tuple[bool, ...] | None, bool]:
    """(window, per-layer SWA flags, chunked) as llama.cpp b11312 sets them; (None, None, False) without SWA."""
    if not block_count:
        return None, None, False
    window = number(f"{arch}.attention.sliding_window")
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    chunked = False
    if arch in _SWA_FROM_ARRAY:
        if not isinstance(pattern, tuple):
            return None, None, False
    elif arch in _SWA_RULES:
        period, dense_first, when = _SWA_RULES[arch]
        if when == "key>0" and not window:
            return None, None, False
        if when == "64 layers" and block_count != 64:
            return None, None, False
        if when == "llama4":
            if window == 0 and f"{arch}.attention.sliding_window" in meta:
                return None, None, False
            window, chunked = 8192, True
        if when == "smallthinker":
            if not window:
                return None, None, False
            window = 4096
        window = window or _SWA_DEFAULT_WINDOW.get(arch)
        if not isinstance(pattern, tuple):
            # llama-hparams.cpp:8-22 (set_swa_pattern), the period may be overridden by a scalar in the file
            period = pattern if isinstance(pattern, int) and not isinstance(pattern, bool) else period
            n_layer = block_count - (number(f"{arch}.nextn_predict_layers") or 0)
            flags = [
                (period == 0 or il % period != 0) if dense_first else (period == 0 or il % period < period - 1)
                for il in range(n_layer)
            ]
            pattern = tuple(flags) + (False,) * (block_count - n_layer)
    else:
        return None, None, False
    if not window:
        raise InvalidGgufError(
            f"'{file}' declares sliding-window layers but no {arch}.attention.sliding_window.",
            hint="The file is incomplete; use another conversion of the model.",
        )
    flags_out = tuple(bool(v) for v in pattern)[:block_count]
    flags_out += (False,) * (block_count - len(flags_out))
    if not any(flags_out):
        return None, None, False
    return window, flags_out, chunked


# QUANTIZATION NAMES

#: llama_ftype (include/llama.h:117-162) -> the name llama-quantize takes (tools/quantize/quantize.cpp:34-75)
LLAMA_FTYPE_NAMES: Mapping[int, str] = MappingProxyType(
    {
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
        12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
        19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
        26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
        37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
    }
)
_LLAMA_FTYPE_GUESSED = 1024  # llama.h:161

# which file type llama.cpp guesses from the most common tensor type (src/llama-model-loader.cpp:752-780)
_GUESS_FROM_TYPE: Mapping[str, str] = MappingProxyType(
    {"F32": "F32", "F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
     "Q8_0": "Q8_0", "Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K",
     "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_S",
     "IQ3_XXS": "IQ3_XXS", "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
     "IQ3_S": "IQ3_S", "NVFP4": "NVFP4", "Q1_0": "Q1_0", "Q2_0": "Q2_0"}
)


def quant_from_file_type(file_type: int) -> str | None:
    """The quantization name of a ``general.file_type`` value, None for values llama.cpp does not name."""
    return LLAMA_FTYPE_NAMES.get(file_type & ~_LLAMA_FTYPE_GUESSED)


def _guess_quant(header: GgufHeader) -> str | None:
    counts = Counter(t.ggml_type for t in header.tensors)
    if not counts:
        return None
    return _GUESS_FROM_TYPE.get(counts.most_common(1)[0][0])


# One quant token: the llama-quantize names, their L/XL variants (bartowski's _L keeps embed/output at Q8_0,
# unsloth's _XL are dynamic mixes), MXFP4(_MOE), and unsloth's "UD-" prefix. Parts may be joined by '_', '-'
# or '.' and any case. Boundaries: start or a separator before, a separator or the end after.
_QUANT_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])"
    r"(?P<quant>(?:UD[-_.])?"
    r"(?:IQ[1-4][-_.](?:XXS|XS|S|M|NL)"
    r"|Q[1-8][-_.]K(?:[-_.](?:XXS|XS|S|M|L|XL))?"
    r"|Q[1-8][-_.][01](?:[-_.][48][-_.][48])?"
    r"|TQ[12][-_.]0|MXFP4(?:[-_.]MOE)?|NVFP4|BF16|FP16|F16|FP32|F32))"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)


def quant_from_filename(name: str) -> str | None:
    """The quantization in a GGUF file or folder name (the last one named), canonical: "Q4_K_M", "UD-Q4_K_XL".

    Looks at the file stem first, then the folders above it (bartowski keeps big quants in ``Q8_0/``).
    """
    path = PurePosixPath(name.replace("\\", "/"))
    parts = [path.name, *reversed(path.parent.parts)]
    for part in parts:
        stem = re.sub(r"\.gguf$", "", part, flags=re.IGNORECASE)
        stem = _SPLIT_SUFFIX.sub("", stem)
        matches = list(_QUANT_TOKEN.finditer(stem))
        if matches:
            return _canonical_quant(matches[-1].group("quant"))
    return None


def _canonical_quant(raw: str) -> str:
    text = re.sub(r"[-_.]", "_", raw.upper())
    text = {"FP16": "F16", "FP32": "F32"}.get(text, text)
    if text.startswith("UD_"):
        text = "UD-" + text[3:]
    return text


# Nominal bits per weight, only to order variants. Measured: llama-quantize's sizes for Llama-3-8B
# (8.03e9 weights) in tools/quantize/quantize.cpp:37-69 ("4.58G" read as GiB); the IQ/TQ/Q1/Q2 figures are the
# bpw that table states; F16/BF16/F32 are exact. L/XL/UD variants get their base's figure: their real size is
# in their files (header_bits_per_weight).
_LLAMA3_8B_WEIGHTS = 8.03e9


def _from_llama3_gib(gib: float) -> float:
    return round(gib * (1 << 30) * 8 / _LLAMA3_8B_WEIGHTS, 2)


NOMINAL_BITS_PER_WEIGHT: Mapping[str, float] = MappingProxyType(
    {
        "Q1_0": 1.125, "Q2_0": 2.25, "IQ1_S": 1.56, "IQ1_M": 1.75, "TQ1_0": 1.69, "TQ2_0": 2.06, "IQ2_XXS": 2.06,
        "IQ2_XS": 2.31, "IQ2_S": 2.5, "IQ2_M": 2.7, "IQ3_XXS": 3.06, "IQ3_XS": 3.3, "IQ3_S": 3.44, "IQ3_M": 3.66,
        "IQ4_XS": 4.25, "IQ4_NL": 4.5, "MXFP4": 4.25, "MXFP4_MOE": 4.25, "NVFP4": 4.5,
        "Q2_K_S": _from_llama3_gib(2.96) - 0.01, "Q2_K": _from_llama3_gib(2.96),
        "Q3_K_S": _from_llama3_gib(3.41), "Q3_K_M": _from_llama3_gib(3.74), "Q3_K_L": _from_llama3_gib(4.03),
        "Q4_0": _from_llama3_gib(4.34), "Q4_1": _from_llama3_gib(4.78), "Q4_K_S": _from_llama3_gib(4.37),
        "Q4_K_M": _from_llama3_gib(4.58), "Q5_0": _from_llama3_gib(5.21), "Q5_1": _from_llama3_gib(5.65),
        "Q5_K_S": _from_llama3_gib(5.21) + 0.01, "Q5_K_M": _from_llama3_gib(5.33), "Q6_K": _from_llama3_gib(6.14),
        "Q8_0": _from_llama3_gib(7.96), "F16": 16.0, "BF16": 16.0, "F32": 32.0,
    }
)


def bits_per_weight(quant: str) -> float | None:
    """A nominal bits-per-weight figure for ordering quantizations; None for names it does not know."""
    name = _canonical_quant(quant)
    if name in NOMINAL_BITS_PER_WEIGHT:
        return NOMINAL_BITS_PER_WEIGHT[name]
    base = re.sub(r"^UD-", "", name)
    base = re.sub(r"_(?:L|XL)$", "_M", base) if re.match(r"Q\d_K_(?:L|XL)$", base) else base
    return NOMINAL_BITS_PER_WEIGHT.get(base)


def header_bits_per_weight(header: GgufHeader) -> float:
    """Measured bits per weight: the tensor bytes over the element count."""
    elements = header.n_elements
    return header.tensor_bytes * 8 / elements if elements else 0.0


# SPLIT AND GROUPED FILES

_SPLIT_SUFFIX = re.compile(r"-(\d{5})-of-(\d{5})$")  # src/llama.cpp:552 "%s-%05d-of-%05d.gguf"


@dataclass(frozen=True)
class GgufFile:
    path: str
    size: int


@dataclass(frozen=True)
class GgufVariant:
    """One loadable model file set: a single .gguf or the parts of one split set, in order."""

    key: str  # the path without .gguf (and without -0000N-of-0000M for split sets): unique per variant
    quant: str | None
    files: tuple[GgufFile, ...]
    split_count: int  # 1 for a single file
    missing: tuple[str, ...]  # paths of split parts the listing lacks

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def first_file(self) -> str:
        """The file to hand llama.cpp (``-m``): it finds the other parts next to it (src/llama.cpp:552-580)."""
        return self.files[0].path


@dataclass(frozen=True)
class GgufListing:
    variants: tuple[GgufVariant, ...]
    projectors: tuple[GgufFile, ...]  # mmproj*.gguf: vision/audio projectors, not models

    def by_quant(self, quant: str) -> tuple[GgufVariant, ...]:
        wanted = _canonical_quant(quant)
        return tuple(v for v in self.variants if v.quant == wanted)


def group_gguf_files(paths: Iterable[tuple[str, int]]) -> GgufListing:
    """Group a repo listing of (path, size) into GGUF variants and projector files; other files are ignored."""
    singles: list[GgufVariant] = []
    projectors: list[GgufFile] = []
    split_sets: dict[tuple[str, int], dict[int, GgufFile]] = {}
    for path, size in paths:
        if not path.lower().endswith(".gguf"):
            continue
        entry = GgufFile(path=path, size=int(size))
        if "mmproj" in PurePosixPath(path).name.lower():
            projectors.append(entry)
            continue
        stem = path[: -len(".gguf")]
        match = _SPLIT_SUFFIX.search(stem)
        if match:
            number, count = int(match.group(1)), int(match.group(2))
            if 1 <= number <= count:
                split_sets.setdefault((stem[: match.start()], count), {})[number] = entry
                continue
        quant = quant_from_filename(path)
        singles.append(GgufVariant(key=stem, quant=quant, files=(entry,), split_count=1, missing=()))
    variants = list(singles)
    for (base, count), parts in split_sets.items():
        missing = tuple(f"{base}-{n:05d}-of-{count:05d}.gguf" for n in range(1, count + 1) if n not in parts)
        variants.append(
            GgufVariant(
                key=base if sum(1 for b, _ in split_sets if b == base) == 1 else f"{base}-of-{count:05d}",
                quant=quant_from_filename(base + ".gguf"),
                files=tuple(parts[n] for n in sorted(parts)),
                split_count=count,
                missing=missing,
            )
        )
    variants.sort(key=lambda v: (bits_per_weight(v.quant or "") or 99.0, v.total_size, v.key))
    projectors.sort(key=lambda f: f.path)
    return GgufListing(variants=tuple(variants), projectors=tuple(projectors))


def require_complete(variant: GgufVariant) -> GgufVariant:
    """``variant`` if it has all its parts, else an error naming the missing ones."""
    if variant.missing:
        raise InvalidGgufError(
            f"The GGUF split set '{variant.key}' has {len(variant.files)} of its {variant.split_count} parts; "
            f"missing: {', '.join(variant.missing)}.",
            hint="Upload or download the missing parts, or pick another quantization.",
        )
    return variant


# ARCHITECTURES

#: every architecture name llama.cpp b11312 builds a model for: LLM_ARCH_NAMES (src/llama-arch.cpp:8-163) less
#: "clip" (projectors only, src/llama.cpp:352), "(unknown)", and "gptj" (named but without a model,
#: llama_model_mapping in src/llama-model.cpp:43-351 throws "unsupported model architecture").
LLAMA_CPP_ARCHITECTURES: frozenset[str] = frozenset(
    {
        "llama", "llama4", "deci", "falcon", "grok", "gpt2", "gptneox", "mpt", "baichuan", "starcoder", "refact",
        "bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2", "jina-bert-v3", "eurobert",
        "bloom", "stablelm", "qwen", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen3moe", "qwen3next", "qwen3vl",
        "qwen3vlmoe", "qwen35", "qwen35moe", "qwen4exp", "phi2", "phi3", "phimoe", "plamo", "plamo2", "plamo3",
        "codeshell", "orion", "internlm2", "minicpm", "minicpm3", "gemma", "gemma2", "gemma3", "gemma3n", "gemma4",
        "gemma4-assistant", "gemma-embedding", "starcoder2", "mamba", "mamba2", "maple", "jamba", "falcon-h1", "xverse",
        "command-r", "cohere2", "cohere2moe", "dbrx", "olmo", "olmo2", "olmoe", "muse-glimmer", "openelm", "arctic",
        "deepseek", "deepseek2", "deepseek2-ocr", "deepseek32", "deepseek4", "chatglm", "glm4", "glm4moe", "glm-dsa",
        "bitnet", "t5", "t5encoder", "jais", "jais2", "nemotron", "nemotron_h", "nemotron_h_moe", "exaone", "exaone4",
        "exaone-moe", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "granite", "granitemoe", "granitehybrid",
        "graniteswitch", "granite_swa", "chameleon", "wavtokenizer-dec", "plm", "bailingmoe", "bailingmoe2",
        "bailingmoe3", "dots1", "dots3note", "arcee", "afmoe", "laguna", "ernie4_5", "ernie4_5-moe", "hunyuan-moe",
        "hunyuan-dense", "hunyuan_vl", "hy_v3", "hy_v4", "smollm3", "gpt-oss", "lfm2", "lfm2moe", "dream",
        "smallthinker", "llada", "llada-moe", "seed_oss", "grovemoe", "apertus", "minimax-01", "hrm_text", "minimax-m2",
        "minimax-m3", "cogvlm", "rnd1", "pangu-embedded", "mistral3", "eagle3", "dflash", "mistral4", "paddleocr",
        "mimo2", "step35", "spark2_5", "llama-embed", "maincoder", "kimi-linear", "kimi-k3", "glm5-next", "talkie",
        "mellum", "nanbeige", "qwen3tts", "pockettts"
    }
)


def check_architecture(model: GgufModel) -> GgufModel:
    """``model`` if llama.cpp b11312 can build it, else an error saying what to do instead."""
    if model.architecture in LLAMA_CPP_ARCHITECTURES:
        return model
    if model.architecture == "clip":
        raise InvalidGgufError(
            "This GGUF is a multimodal projector (architecture 'clip'), not a model.",
            hint="Pick the model's main .gguf file; the projector goes with it (llama-server --mmproj).",
        )
    raise InvalidGgufError(
        f"The GGUF's architecture '{model.architecture}' is not one llama.cpp b11312 can run.",
        hint="Pick a safetensors variant of the model and the vLLM or transformers engine, which may support it.",
    )
