"""Read what a safetensors file holds from its header alone: 8-byte LE length, then a JSON header.

The hubs give us the header through HTTP Range reads; a local file gives it through two small reads.
Either way the tensor data (the weights) is never read.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from core import errors
from core.errors import NoSafetensorsError
from core.hubs.base import WeightStats

#: refuse absurd header lengths instead of allocating them (huggingface_hub caps at 25 MB)
MAX_HEADER_BYTES = 100_000_000
#: how much a first Range read asks for; most headers fit, a second read fetches the rest
FIRST_READ_BYTES = 100_000


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype names: "BF16", "F16", "F32", "I32", "U8", "F8_E4M3", ...
    shape: tuple[int, ...]
    nbytes: int  # from data_offsets, exact even for packed/quantised dtypes

    @property
    def parameters(self) -> int:
        return math.prod(self.shape)


def header_length(prefix: bytes, *, file: str) -> int:
    """The JSON header length from the first 8 bytes; raises on a file that is not safetensors."""
    if len(prefix) < 8:
        raise _broken(file, "it is shorter than 8 bytes")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length <= 1 or length > MAX_HEADER_BYTES:
        raise _broken(file, f"its header length {length} is out of range")
    return int(length)


def parse_header(raw: bytes, *, file: str, data_bytes: int | None = None) -> list[TensorEntry]:
    """Parse the JSON header bytes (without the 8-byte length) into tensor entries; ``data_bytes`` (the file
    size less the header) bounds the tensors' data offsets where it is known."""
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" \x00"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _broken(file, f"its header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise _broken(file, "its header is not a JSON object")
    return entries_from_header(header, file=file, data_bytes=data_bytes)


#: the dtypes of the safetensors format (safetensors/src/tensor.rs, enum Dtype), with bits per element
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
# No tensor has more dimensions than this (PyTorch allows 64).
_MAX_DIMS = 64


def entries_from_header(
    header: Mapping[str, Any], *, file: str, data_bytes: int | None = None
) -> list[TensorEntry]:
    """Tensor entries, each checked: a dtype of the format, a shape of whole non-negative sizes, data offsets
    inside the file that hold exactly shape × dtype bytes (a header that lies would plan a wrong size)."""
    entries = []
    for name, value in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = value["data_offsets"]
            dtype, dims = value["dtype"], list(value["shape"])
        except (KeyError, TypeError, ValueError) as error:
            raise _broken(file, f"tensor {name!r} has no dtype/shape/data_offsets") from error
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise _broken(file, f"tensor {name!r} has the dtype {dtype!r}, which safetensors does not define")
        if len(dims) > _MAX_DIMS or not all(_whole(d) for d in dims):
            raise _broken(file, f"tensor {name!r} has the shape {dims!r}; sizes must be whole numbers from 0")
        if not (_whole(start) and _whole(end) and start <= end):
            raise _broken(file, f"tensor {name!r} has the data offsets {[start, end]!r}")
        if data_bytes is not None and end > data_bytes:
            raise _broken(file, f"tensor {name!r} ends at byte {end:,} of data, past the file's {data_bytes:,}")
        entry = TensorEntry(name=name, dtype=dtype, shape=tuple(dims), nbytes=end - start)
        expected_bits = entry.parameters * DTYPE_BITS[dtype]
        if (expected_bits + 7) // 8 != entry.nbytes:
            raise _broken(
                file,
                f"tensor {name!r} ({dtype} {list(dims)}) needs {(expected_bits + 7) // 8:,} bytes, "
                f"its data offsets hold {entry.nbytes:,}",
            )
        entries.append(entry)
    return entries


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_local_header(path: Path) -> list[TensorEntry]:
    """Read only the header of a local safetensors file (two small reads, no tensor data)."""
    with path.open("rb") as handle:
        return _read_header(handle, file=path.name)


def _read_header(handle: BinaryIO, *, file: str) -> list[TensorEntry]:
    length = header_length(handle.read(8), file=file)
    raw = handle.read(length)
    if len(raw) != length:
        raise _broken(file, "it ends inside its header")
    return parse_header(raw, file=file)


def weight_stats(entries: Iterable[TensorEntry]) -> WeightStats:
    """Sum tensor entries of all shards into per-dtype parameter and byte counts."""
    parameters: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    count = 0
    lm_head = 0
    for entry in entries:
        count += 1
        parameters[entry.dtype] = parameters.get(entry.dtype, 0) + entry.parameters
        nbytes[entry.dtype] = nbytes.get(entry.dtype, 0) + entry.nbytes
        # multimodal checkpoints prefix it ("language_model.lm_head.weight")
        if entry.name == "lm_head.weight" or entry.name.endswith(".lm_head.weight"):
            lm_head += entry.nbytes
    return WeightStats(parameters_by_dtype=parameters, bytes_by_dtype=nbytes, tensor_count=count, lm_head_bytes=lm_head)


def _broken(file: str, why: str) -> NoSafetensorsError:
    return NoSafetensorsError(
        f"'{file}' is not a readable safetensors file: {why}.",
        hint="Re-download it, or re-export the model with save_pretrained(..., safe_serialization=True).",
        field=errors.WEIGHTS,
    )
