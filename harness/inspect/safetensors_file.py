"""safetensors files: an 8-byte header length, a JSON header naming every tensor's dtype, shape
and byte range, then the bytes. Read with the ``safetensors`` library; where it refuses a file,
the header is checked entry by entry to say which part lies."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.inspect.reader import (
    ELEMENT_SIZES,
    Contents,
    DefectKind,
    FileFormat,
    OtherEntry,
    TensorEntry,
)

# safetensors' dtype names, and torch's for each.
DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
}
HEADER_LIMIT = 100_000_000  # the library's own bound on the header's length


def looks_like(head: bytes) -> bool:
    """A little-endian header length, then the JSON header's opening brace."""
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= HEADER_LIMIT and head[8:9] == b"{"


class SafetensorsReader:
    def read(self, path: Path) -> Contents:
        contents = Contents(format=FileFormat.SAFETENSORS)
        where = str(path)
        size = path.stat().st_size
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            raw = handle.read(length)
        if len(raw) < length:
            return contents.defect(
                DefectKind.TRUNCATED,
                where,
                f"cut short inside the header: it claims {length} bytes, {len(raw)} follow",
            )
        try:
            header = json.loads(raw)
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (ValueError, RecursionError) as exc:
            return contents.defect(DefectKind.BAD_HEADER, where, f"not JSON: {exc}")
        metadata = header.pop("__metadata__", None)
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            return contents.defect(
                DefectKind.BAD_HEADER, where, "__metadata__ is not a mapping of strings to strings"
            )
        for key, value in (metadata or {}).items():
            contents.others.append(
                OtherEntry(path=f"__metadata__.{key}", type="str", value=value[:80])
            )
        data = size - 8 - length
        ranges: list[tuple[int, int, str]] = []
        for name, entry in header.items():
            problem = _entry_problem(name, entry, contents)
            offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
            if offsets is not None and _offsets_ok(offsets):
                ranges.append((offsets[0], offsets[1], name))
            if problem is not None:
                contents.defect(DefectKind.BAD_HEADER, f"{where}:{name}", problem)
        _check_ranges(where, sorted(ranges), data, contents)
        if not contents.defects:
            _confirm(path, contents)
        contents.notes.append("safetensors holds tensors only: loading it runs no code")
        return contents


def _entry_problem(name: str, entry: Any, contents: Contents) -> str | None:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        return "an entry without dtype, shape and data_offsets"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        return f"dtype {dtype!r} is not a name"
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        return f"shape {shape!r} is not a list of sizes"
    if not _offsets_ok(offsets):
        return f"data_offsets {offsets!r} is not [begin, end]"
    torch_dtype = DTYPES.get(dtype, f"? ({dtype})")
    element = ELEMENT_SIZES.get(torch_dtype, 0)
    begin, end = offsets
    need = math.prod(shape) * element
    if element and end - begin != need:
        return (
            f"{dtype} {shape} needs {need} bytes, the header gives it {end - begin} "
            f"(bytes {begin}..{end})"
        )
    contents.tensors.append(
        TensorEntry(
            path=name,
            dtype=torch_dtype,
            shape=tuple(shape),
            bytes=end - begin,
            location="none (safetensors records no device)",
            storage=f"bytes {begin}..{end}",
        )
    )
    return None


def _offsets_ok(offsets: Any) -> bool:
    return (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(n) is int and n >= 0 for n in offsets)
    )


def _check_ranges(
    where: str, ranges: list[tuple[int, int, str]], data: int, contents: Contents
) -> None:
    """The byte ranges tile the data section exactly: no gap, no overlap, nothing after."""
    position = 0
    for begin, end, name in ranges:
        if begin != position or end < begin:
            what = "overlaps the tensor before it" if begin < position else "leaves a gap before it"
            contents.defect(
                DefectKind.BAD_HEADER,
                f"{where}:{name}",
                f"bytes {begin}..{end} {what} (expected to start at {position})",
            )
        position = max(position, end)
    if position > data:
        contents.defect(
            DefectKind.TRUNCATED,
            where,
            f"cut short: the header places tensors up to byte {position} of the data, the file "
            f"holds {data}",
        )
    elif position < data:
        contents.defect(
            DefectKind.BAD_HEADER,
            where,
            f"{data - position} bytes follow the last tensor the header names",
        )


def _confirm(path: Path, contents: Contents) -> None:
    """The library agrees: it opens the file and lists the same names."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = set(handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        contents.defect(DefectKind.BAD_HEADER, str(path), f"safetensors: {exc}")
        return
    mine = {tensor.path for tensor in contents.tensors}
    if names != mine:
        contents.defect(
            DefectKind.BAD_HEADER,
            str(path),
            f"safetensors lists {len(names)} tensors, the header {len(mine)}",
        )
