"""A sharded safetensors checkpoint, as ``save_pretrained`` writes it: shard files
(``model-00001-of-00003.safetensors`` ...) and an index (``model.safetensors.index.json``) whose
``weight_map`` names the shard that holds each tensor. Read as one checkpoint: every shard's header
(no tensor bytes), each tensor's ``storage`` naming its shard, and the index checked against the
shards in both directions."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.inspect.reader import Contents, DefectKind, FileFormat, OtherEntry
from harness.inspect.safetensors_file import SafetensorsReader

INDEX_SUFFIX = ".safetensors.index.json"
SHOWN = 4  # names listed in a message before "and N more"


def is_index(path: Path) -> bool:
    return path.name.endswith(INDEX_SUFFIX)


def indexes_in(folder: Path) -> list[Path]:
    """The safetensors indexes a folder holds (``model.safetensors.index.json``)."""
    return sorted(p for p in folder.glob(f"*{INDEX_SUFFIX}") if p.is_file())


def index_of(path: Path) -> Path | None:
    """The index of the sharded checkpoint at ``path``: ``path`` itself where it is an index,
    else the one index the folder holds; None where it holds none or several."""
    if is_index(path):
        return path
    found = indexes_in(path) if path.is_dir() else []
    return found[0] if len(found) == 1 else None


def shard_pattern(index: Path) -> re.Pattern[str]:
    """The names ``save_pretrained`` gives the shards of ``index``: ``model-00001-of-00003``."""
    prefix = index.name.removesuffix(INDEX_SUFFIX)
    return re.compile(rf"{re.escape(prefix)}-\d+-of-\d+\.safetensors")


def checkpoint_files(index: Path) -> list[Path]:
    """The files the checkpoint of ``index`` is made of, as the reader reads it: the index, the
    shard files beside it that its weight_map names, and the unnamed ones that the shards' name
    pattern matches; those that exist, sorted. A weight_map that cannot be read names none."""
    try:
        weight_map = json.loads(index.read_bytes()).get("weight_map")
        named_shards = {str(shard) for shard in weight_map.values()}
    except (OSError, ValueError, RecursionError, AttributeError, TypeError):
        named_shards = set()
    pattern = shard_pattern(index)
    shards = {
        index.parent / shard
        for shard in named_shards
        if shard not in ("", ".", "..") and Path(shard).name == shard
    }
    shards |= {p for p in index.parent.glob("*.safetensors") if pattern.fullmatch(p.name)}
    return sorted({index, *(shard for shard in shards if shard.is_file())})


def named(names: list[str]) -> str:
    """The first few names, then how many more."""
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


class ShardedSafetensorsReader:
    """``read`` takes the folder (which must hold one index) or the index file itself."""

    def read(self, path: Path) -> Contents:
        contents = Contents(format=FileFormat.SAFETENSORS_SHARDED)
        if path.is_dir():
            found = indexes_in(path)
            if len(found) != 1:
                contents.format = FileFormat.UNKNOWN
                return contents.defect(
                    DefectKind.UNKNOWN_FORMAT,
                    str(path),
                    f"holds {len(found)} safetensors indexes ({named([p.name for p in found])}): "
                    "give the index of the checkpoint to read by its path",
                )
            path = found[0]
        weight_map = _weight_map(path, contents)
        if weight_map is None:
            return contents
        folder = path.parent
        by_shard: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(name)
        held: dict[str, set[str]] = {}  # each shard read without a defect -> its tensors
        for shard, names in sorted(by_shard.items()):
            if shard in ("", ".", "..") or Path(shard).name != shard:
                contents.defect(
                    DefectKind.BAD_INDEX,
                    str(path),
                    f"weight_map names the shard {shard!r}, not a file beside the index "
                    f"(for {named(names)})",
                )
                continue
            if not (folder / shard).is_file():
                contents.defect(
                    DefectKind.MISSING_SHARD,
                    str(folder / shard),
                    f"the shard the index names for {len(names)} tensor(s) is missing: "
                    f"{named(names)}",
                )
                continue
            if (names_held := self._add_shard(folder / shard, contents)) is not None:
                held[shard] = names_held
        prefix = path.name.removesuffix(INDEX_SUFFIX)
        pattern = shard_pattern(path)
        for extra in sorted(folder.glob(f"{prefix}-*.safetensors")):
            unnamed = extra.name not in by_shard and pattern.fullmatch(extra.name)
            if unnamed and (names_held := self._add_shard(extra, contents)) is not None:
                held[extra.name] = names_held
        _check_index(path, weight_map, held, contents)
        _check_total_size(path, contents)
        contents.notes.append(
            f"{len(by_shard)} shard file(s) named by {path.name}, read by their headers alone; "
            "safetensors holds tensors only: loading it runs no code"
        )
        return contents

    @staticmethod
    def _add_shard(shard: Path, contents: Contents) -> set[str] | None:
        """The shard's tensors (their storage naming the shard) and defects into ``contents``;
        returns the names its header holds, or None where a defect leaves them uncertain (the
        index is then not checked against it)."""
        try:
            found = SafetensorsReader().read(shard)
        except OSError as exc:
            contents.defect(DefectKind.UNREADABLE, str(shard), str(exc))
            return None
        except Exception as exc:  # a hostile header: a defect, never a crash
            contents.defect(
                DefectKind.BAD_HEADER,
                str(shard),
                f"the header could not be read ({type(exc).__name__}: {str(exc)[:200]})",
            )
            return None
        contents.tensors += [
            replace(tensor, storage=f"{shard.name} {tensor.storage}") for tensor in found.tensors
        ]
        contents.defects += found.defects
        known = {(other.path, other.value) for other in contents.others}
        contents.others += [o for o in found.others if (o.path, o.value) not in known]
        return None if found.defects else {tensor.path for tensor in found.tensors}


def _weight_map(path: Path, contents: Contents) -> dict[str, str] | None:
    """The index's ``weight_map`` (tensor name -> shard file), or None with the defect."""
    try:
        index: Any = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        contents.defect(DefectKind.BAD_INDEX, str(path), f"not JSON: {exc}")
        return None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if (
        not weight_map
        or not isinstance(weight_map, dict)
        or not all(isinstance(shard, str) for shard in weight_map.values())
    ):
        contents.defect(
            DefectKind.BAD_INDEX,
            str(path),
            "has no weight_map mapping each tensor's name to its shard file",
        )
        return None
    metadata = index.get("metadata")
    for key, value in (metadata or {}).items() if isinstance(metadata, dict) else ():
        contents.others.append(
            OtherEntry(path=f"index.metadata.{key}", type=type(value).__name__, value=str(value))
        )
    return {str(name): shard for name, shard in weight_map.items()}


def _check_index(
    path: Path, weight_map: dict[str, str], held: dict[str, set[str]], contents: Contents
) -> None:
    """Every entry points at a shard holding that tensor; every tensor a shard holds has one."""
    homes: dict[str, list[str]] = {}  # tensor -> the shards that hold it
    for shard, holds in held.items():
        for name in holds:
            homes.setdefault(name, []).append(shard)
    stale: dict[str, list[str]] = {}  # shard -> what the index wrongly puts there
    told: set[str] = set()
    for name, shard in weight_map.items():
        if shard in held and name not in held[shard]:
            elsewhere = homes.get(name)
            stale.setdefault(shard, []).append(
                f"{name} (held by {', '.join(elsewhere)})" if elsewhere else name
            )
            told.add(name)
    for shard, names in stale.items():
        contents.defect(
            DefectKind.STALE_INDEX,
            str(path.parent / shard),
            f"{path.name} puts {len(names)} tensor(s) in this shard, which does not hold them: "
            f"{named(names)}",
        )
    for shard, holds in held.items():
        unindexed = sorted(
            f"{name} (the index reads it from {weight_map[name]})" if name in weight_map else name
            for name in holds
            if weight_map.get(name) != shard and name not in told
        )
        if unindexed:
            contents.defect(
                DefectKind.UNINDEXED_TENSOR,
                str(path.parent / shard),
                f"holds {len(unindexed)} tensor(s) that {path.name} does not map to it: "
                f"{named(unindexed)}",
            )


def _check_total_size(path: Path, contents: Contents) -> None:
    """``metadata.total_size`` beside the tensors' bytes: a note only, since no loader reads it
    and writers have counted it differently (a view's whole storage, tied weights once)."""
    stated = next((o.value for o in contents.others if o.path == "index.metadata.total_size"), None)
    if stated is None or not stated.isdigit() or contents.defects:
        return
    total = sum(tensor.bytes or 0 for tensor in contents.tensors)
    if int(stated) != total:
        contents.notes.append(
            f"{path.name}'s metadata.total_size is {int(stated):,} bytes, its shards' tensors "
            f"hold {total:,}: loaders do not read it, so it is not a defect"
        )
