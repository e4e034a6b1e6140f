"""A team's own checkpoint, loaded in a worker by its format's safe loader: every tensor's
digest, dtype, shape, saved location and the device it landed on.

Nothing is unpickled with ``weights_only=False``: torch files load with ``weights_only=True``
(inside ``safe_globals`` for the globals the user named), safetensors with ``safe_open`` (a
sharded checkpoint shard by shard as its index maps them, one checkpoint whose index and shards
are digested together), a DCP directory with ``dcp.load`` of its tensors only (``.metadata``
through a restricted unpickler that builds DCP's own classes and nothing else; the pickled
non-tensor entries are never read), a TorchScript archive with ``torch.jit.load``: the one loader
here that runs what the file carries (TorchScript, not Python; its pickles may name only
TorchScript's own classes). A file that names a global which runs code is never loaded, whatever
the user allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import pickle
import resource
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.devices import cuda_index
from harness.core.jobspec import GoldenSpec
from harness.core.recipes import GOLDEN, registrar
from harness.inspect import FileFormat, read_contents
from harness.inspect.dcp_dir import METADATA, dcp_global
from harness.inspect.pickles import runs_code
from harness.inspect.safetensors_index import checkpoint_files, index_of, named
from harness.worker.fingerprint import tensor_record
from harness.worker.one_process import artifact_sha256, file_sha256, raised
from harness.worker.probe import isolation_probe

GOLDEN_PERFORM: dict[str, Callable[[GoldenSpec], dict[str, Any]]] = {}
# formats read by safe_open, bytes only: a changed file is still loaded, to name what changed
# (a torch file is not: the globals its recording allowed were allowed for the recorded file)
BYTES_ONLY = frozenset({FileFormat.SAFETENSORS, FileFormat.SAFETENSORS_SHARDED})
performs = registrar(GOLDEN_PERFORM, "harness.worker.golden_load")


def resolve_global(name: str) -> Any:
    """``module.Name`` (or ``module.Outer.Name``) as an object, importing its module: only ever
    for a name the user passed to ``--safe-global``."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(f"--safe-global {name}: no importable module in that name")


def map_policy(locations: set[str], device_count: int) -> str:
    """``none`` (load where saved) when every saved location exists here, else ``cpu``."""
    for location in locations:
        index = cuda_index(location)
        if location != "cpu" and (index is None or index >= device_count):
            return "cpu"
    return "none"


def placement(choice: str, located: set[str], device_count: int) -> str:
    """What the load passes as ``map_location`` (``none``: nothing, storages go where saved) for
    ``golden record --map-location``'s choice: ``auto`` falls back to the CPU, as the matrix does,
    when a saved device is not visible; ``as-saved`` never does (the load raises there)."""
    if choice in ("auto", ""):
        return map_policy(located, device_count)
    return "none" if choice == "as-saved" else choice


def tensors_of(value: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a loaded object by the dotted path ``harness.inspect`` lists it under."""
    if depth > 200:
        return

    def join(key: object) -> str:
        return f"{path}.{key}" if path else str(key)

    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, nn.Module):
        for name, tensor in value.state_dict(keep_vars=True).items():
            yield join(name), tensor
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_of(item, join(key), depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from tensors_of(item, join(index), depth + 1)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for key, item in vars(value).items():
            yield from tensors_of(item, join(key), depth + 1)


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's ``Metadata`` and refuses every global DCP's own metadata never names."""

    def find_class(self, module: str, name: str) -> Any:
        if not dcp_global(module, name):  # exact pairs: never a dotted name
            raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP's metadata")
        return super().find_class(module, name)


def _load_dcp(path: Path, wanted: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    class SafeMetadataReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(Path(self.path) / METADATA, "rb") as handle:
                metadata = _MetadataUnpickler(io.BytesIO(handle.read())).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    state = {
        fqn: torch.empty(shape, dtype=getattr(torch, dtype))
        for fqn, (dtype, shape) in wanted.items()
    }
    dcp_load(state, storage_reader=SafeMetadataReader(str(path)), no_dist=True)
    return state


@performs(GOLDEN)
def run_golden(spec: GoldenSpec) -> dict[str, Any]:
    started = time.perf_counter()
    path = Path(spec.path)
    report: dict[str, Any] = {"probe": isolation_probe(), "torch": torch.__version__}
    contents = read_contents(path)
    report.update(
        format=str(contents.format),
        defects=[defect.to_json() for defect in contents.defects],
        refused=contents.refused,
    )
    try:
        report["sha256"], files = checkpoint_digest(path, contents.format)
        report["bytes"] = sum(file.stat().st_size for file in files)
    except OSError:
        pass  # unreadable: read_contents says so
    if contents.defects or contents.format is FileFormat.UNKNOWN:
        report.update(
            status="broken",
            message="; ".join(defect.describe() for defect in contents.defects),
        )
        return report
    changed = bool(spec.expected_sha256) and report.get("sha256") != spec.expected_sha256
    if changed and contents.format not in BYTES_ONLY:
        report.update(status="changed")
        return report
    code = [name for name in contents.globals if runs_code(name)]
    if code:
        report.update(status="dangerous", refused=code)
        return report
    missing = [name for name in contents.refused if name not in spec.safe_globals]
    if missing:
        report.update(status="needs_globals", refused=missing)
        return report
    if contents.unreadable:
        report.update(status="unreadable", message=contents.unreadable)
        return report
    saved = {tensor.path: tensor.location for tensor in contents.tensors}
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # a safetensors file records no device, a DCP shard none either: only torch files have one
    located = {where for where in saved.values() if not where.startswith(("none", "sharded"))}
    policy = placement(spec.map_location, located, count)
    location = None if policy == "none" else policy
    report["map_location"] = policy
    report["map_choice"] = spec.map_location
    before = resident_mb()
    try:
        records = _load(path, contents, spec, location)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        report.update(raised(exc))
        return report
    split = {tensor.path: tensor.split for tensor in contents.tensors if tensor.split}
    for name, record in records.items():
        record["saved"] = saved.get(name, "?")
        if name in split:  # a DCP directory's: how its chunks split the tensor
            record["split"] = split[name]
    report.update(
        status="changed" if changed else "loaded",
        tensors=records,
        work_s=time.perf_counter() - started,
        # the worker's resident memory before the load and its peak (a fork of the zygote
        # starts with the zygote's); the load's own cost is the difference
        memory={"rss_before_mb": before, "peak_rss_mb": peak_mb()},
    )
    return report


def checkpoint_digest(path: Path, fmt: FileFormat) -> tuple[str, list[Path]]:
    """The checkpoint's sha256 and its files. A sharded safetensors checkpoint is its index and
    shards (the folder's other files, its config.json, are not: they hold no tensor), digested
    as a directory is: each file's name and sha256, so a changed, missing or added shard changes
    it; a directory is every file in it; a file, its bytes."""
    index = index_of(path) if fmt is FileFormat.SAFETENSORS_SHARDED else None
    if index is not None:
        files = checkpoint_files(index)
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
        return digest.hexdigest(), files
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return artifact_sha256(path), files


def resident_mb() -> float | None:
    """This process's resident memory now, in MiB (Linux), else None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def peak_mb() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _load(
    path: Path, contents: Any, spec: GoldenSpec, location: str | None
) -> dict[str, dict[str, Any]]:
    """Each tensor's record, by format; one tensor in memory at a time where the format allows."""
    if contents.format is FileFormat.SAFETENSORS:
        from safetensors import safe_open

        records = {}
        with safe_open(str(path), framework="pt", device=location or "cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                records[name] = tensor_record(handle.get_tensor(name))
        return records
    if contents.format is FileFormat.SAFETENSORS_SHARDED:
        return _load_sharded(path, location)
    if contents.format is FileFormat.DCP:
        wanted = {t.path: (t.dtype, t.shape) for t in contents.tensors}
        with warnings.catch_warnings():
            # "torch.distributed is disabled ...": one process reads the directory, as meant
            warnings.simplefilter("ignore", UserWarning)
            state = _load_dcp(path, wanted)
        return {name: tensor_record(tensor) for name, tensor in state.items()}
    if contents.format is FileFormat.TORCHSCRIPT:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still read
            module = torch.jit.load(str(path), map_location=location)  # type: ignore[no-untyped-call]
        return {name: tensor_record(t) for name, t in module.state_dict().items()}
    allowed = [resolve_global(name) for name in spec.safe_globals]
    # Python 2 strings that are not UTF-8 need torch.load's encoding= (read by the weights-only
    # unpickler too, though torch warns that it is not)
    extra = {"encoding": contents.encoding} if contents.encoding else {}
    with _allowing(allowed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pickle_load_args only works", UserWarning)
        loaded = torch.load(
            path,
            weights_only=True,
            map_location=location,
            mmap=contents.format is FileFormat.ZIP,
            **extra,
        )
    return unique_records(tensors_of(loaded))


def _allowing(allowed: list[Any]) -> contextlib.AbstractContextManager[Any]:
    """``torch.serialization.safe_globals(allowed)``; before torch 2.5, which lacks it,
    ``add_safe_globals`` (2.4) for the rest of this worker's one job; nothing to allow, nothing."""
    if not allowed:
        return contextlib.nullcontext()
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(allowed)
    torch.serialization.add_safe_globals(allowed)
    return contextlib.nullcontext()


def _load_sharded(path: Path, location: str | None) -> dict[str, dict[str, Any]]:
    """Every tensor of every shard the index names, shard by shard. ``inspect`` found no defect,
    so each tensor the index maps is in the shard it names and no shard holds one it does not
    map; a file that changed since then is caught here, never loaded in part."""
    from safetensors import safe_open

    index = index_of(path)
    if index is None:  # the reader found one, or the contents would be broken
        raise FileNotFoundError(f"{path}: no single *.safetensors.index.json to load by")
    weight_map: dict[str, str] = json.loads(index.read_bytes())["weight_map"]
    records: dict[str, dict[str, Any]] = {}
    for shard in sorted(set(weight_map.values())):
        with safe_open(str(index.parent / shard), framework="pt", device=location or "cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                records[name] = tensor_record(f.get_tensor(name))
    lost, extra = sorted(set(weight_map) - set(records)), sorted(set(records) - set(weight_map))
    if lost or extra:
        raise ValueError(
            f"{index}: the shards no longer match the index checked a moment before (indexed, "
            f"not in them: {named(lost) or 'none'}; in them, not indexed: {named(extra) or 'none'})"
            ": the folder changed while it was read; let it settle, then run golden again"
        )
    return records


def unique_records(named: Iterator[tuple[str, torch.Tensor]]) -> dict[str, dict[str, Any]]:
    """Each tensor's record by its dotted path; a path that two tensors share (``{"a.b": t,
    "a": {"b": u}}``) keeps both, the later as ``a.b#2``."""
    records: dict[str, dict[str, Any]] = {}
    for name, tensor in named:
        key, count = name, 1
        while key in records:
            count += 1
            key = f"{name}#{count}"
        records[key] = tensor_record(tensor)
    return records
