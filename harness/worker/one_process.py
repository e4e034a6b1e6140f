"""The worker's two jobs: save an artifact, or load one by a recipe and report what it got."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from harness.core.axes import Format, Layout, SaveVariant, Wrapper
from harness.core.classify import ChecksumMismatchError, classify_exception
from harness.core.jobspec import RESUME_AT, RESUME_MORE, SAVE_SEED, TRAIN_STEPS, LoadSpec, SaveSpec
from harness.core.outcomes import ErrorClass
from harness.worker.fingerprint import fingerprint, output_digest
from harness.worker.models import build, train, unwrap, wrap
from harness.worker.one_process_recipes import INDEX, PERFORM, LoadContext
from harness.worker.probe import isolation_probe
from harness.worker.training import DATA_SEED, checkpoint, make_regime, train_steps

MESSAGE_LIMIT = 4000


def configure_torch() -> None:
    """One thread, so the saver's and loader's forward passes agree bitwise and parallel workers
    do not oversubscribe the cores.

    Where a GPU is visible, cuDNN is pinned to deterministic kernels for the eval-mode forward
    pass that both sides compare. ``use_deterministic_algorithms`` only warns (``warn_only``):
    training needs no determinism (the loader checks the saver's recorded digests, not a re-run),
    and it raises for ops resnet trains with (adaptive_avg_pool2d's CUDA backward). On the CPU it
    is left off: one-thread CPU kernels are deterministic already, and the switch imports
    torch._inductor and torch._dynamo (what that costs a worker: docs/performance.md).
    """
    torch.set_num_threads(1)
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_sha256(path: Path) -> str:
    """A file's sha256; for a checkpoint directory (DCP), the sha256 of every file's relative
    name and sha256, sorted: a changed, missing or added file changes it."""
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def save_atomic(obj: Any, path: Path, *, legacy: bool = False) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it: never a torn file.
    ``legacy`` writes the pre-1.6 format (``_use_new_zipfile_serialization=False``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp, _use_new_zipfile_serialization=not legacy)
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if "iostream error" in str(exc) or (
            isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        ):
            # torch's writer says only "basic_ios::clear: iostream error"
            raise OSError(
                exc.errno if isinstance(exc, OSError) else errno.EIO,
                f"writing {path} failed ({exc}): the disk is full or the file too large; the "
                "partial file was removed",
            ) from exc
        raise


SHARDS = 3  # how many shards of about equal size the sharded layout cuts a model into


def save_sharded(module: torch.nn.Module, folder: Path, *, lose_last: bool = False) -> None:
    """The save_pretrained layout, written with the safetensors library into a folder beside
    ``folder``, then renamed: the module's tensors (a tied tensor once, under its first name) in
    shards of about a third each, in state_dict order, and ``model.safetensors.index.json``
    (``total_size``, ``weight_map``). ``lose_last``: the last shard is then deleted, as an
    upload that stopped before it leaves the folder."""
    from safetensors.torch import save_file

    state: dict[str, torch.Tensor] = {}
    kept: set[int] = set()
    for name, tensor in module.state_dict().items():
        if tensor.numel() and tensor.data_ptr() in kept:
            continue  # tied to a tensor already kept
        kept.add(tensor.data_ptr())
        state[name] = tensor.detach().contiguous().cpu()
    total = sum(t.numel() * t.element_size() for t in state.values())
    limit = max(1, -(-total // SHARDS))
    shards: list[dict[str, torch.Tensor]] = [{}]
    filled = 0
    for name, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and filled + size > limit:
            shards.append({})
            filled = 0
        shards[-1][name] = tensor
        filled += size
    names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for file, shard in zip(names, shards, strict=True):
        save_file(shard, str(partial / file), metadata={"format": "pt"})
    weight_map = {key: file for file, shard in zip(names, shards, strict=True) for key in shard}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (partial / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    if lose_last:
        (partial / names[-1]).unlink()
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def save_safetensors(obj: Any, path: Path, variant: SaveVariant) -> None:
    """``save_file`` of a state_dict, or ``save_model`` of a module, to a temporary file beside
    ``path``, then renamed; the sharded layout of a module (:func:`save_sharded`)."""
    from safetensors.torch import save_file, save_model

    if variant in (SaveVariant.SAFETENSORS_SHARDED, SaveVariant.SAFETENSORS_LOST_SHARD):
        lose = variant is SaveVariant.SAFETENSORS_LOST_SHARD
        save_sharded(obj, path, lose_last=lose)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if variant is SaveVariant.SAFETENSORS_MODEL:
            save_model(obj, str(tmp))
        else:
            save_file(obj, str(tmp))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def tagged_as(location: str) -> Iterator[None]:
    """While active, ``torch.save`` tags CPU storages with ``location`` (e.g. ``cuda:1``), so a
    CPU-only machine can write the checkpoint a GPU would. The tagger is removed afterwards;
    removing it touches torch.serialization's private registry (there is no public unregister)."""

    def tagger(storage: Any) -> str | None:
        return location if storage.device.type == "cpu" else None

    def deserializer(storage: Any, _location: str) -> Any:
        return None

    entry = (-1, tagger, deserializer)  # priority -1: before the built-in cpu (10) and cuda (20)
    torch.serialization.register_package(*entry)
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def run_save(spec: SaveSpec) -> dict[str, Any]:
    started = time.perf_counter()
    variant = SaveVariant(spec.variant)
    model = wrap(
        build(spec.model, seed=SAVE_SEED).to(spec.device),
        Layout(spec.layout),
        Wrapper(spec.wrapper),
    )
    obj: Any
    if variant.file_format is Format.TRAIN_STATE:
        # Save the state after RESUME_AT steps; what a resume must reach is recorded after
        # RESUME_MORE more steps of this same, uninterrupted run.
        regime = make_regime(spec.training, model)
        data = torch.Generator().manual_seed(DATA_SEED)
        train_steps(model, regime, data, spec.model, RESUME_AT)
        namespace = variant is SaveVariant.TRAIN_STATE_NAMESPACE
        obj = checkpoint(model, regime, data, namespace_args=namespace)
        path = Path(spec.artifact_path)
        write_checkpoint(obj, path, spec)
        train_steps(model, regime, data, spec.model, RESUME_MORE)
        return saved_report(spec, model, path, started)
    train(model, spec.model, steps=TRAIN_STEPS)
    if variant is SaveVariant.STATE_DICT:
        obj = model.state_dict()
    elif variant is SaveVariant.MODULE_STATE_DICT:
        if not isinstance(model, torch.nn.DataParallel):
            raise ValueError(f"{spec.cell_key}: module_state_dict needs a DataParallel model")
        obj = model.module.state_dict()
    elif variant is SaveVariant.FULL_STATE_DICT:  # complete and unprefixed, from any wrapper
        obj = unwrap(model).state_dict()
    elif variant is SaveVariant.HELPER_STATE_DICT:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        obj = get_model_state_dict(model)  # takes torch.compile's _orig_mod. out
    elif variant is SaveVariant.SAFETENSORS_FILE:
        obj = model.state_dict()  # as held: DataParallel's keys carry 'module.'
    elif variant in (
        SaveVariant.SAFETENSORS_MODEL,
        SaveVariant.SAFETENSORS_SHARDED,
        SaveVariant.SAFETENSORS_LOST_SHARD,
    ):
        obj = unwrap(model)
    elif variant is SaveVariant.BOUND_METHOD:
        obj = model.state_dict  # the mistake under test: the method, not its result
    else:
        obj = model
    path = Path(spec.artifact_path)
    try:
        write_checkpoint(obj, path, spec)
    except Exception as exc:
        if classify_exception(exc) is ErrorClass.UNCLASSIFIED:
            raise  # not a refusal the oracle knows: the save crashed (disk full, a bug)
        # torch.save or safetensors refused the object: what the cell observes
        return raised(exc) | {
            "probe": isolation_probe(),
            "torch": torch.__version__,
            "work_s": time.perf_counter() - started,
        }
    return saved_report(spec, model, path, started)


def write_checkpoint(obj: Any, path: Path, spec: SaveSpec) -> None:
    variant = SaveVariant(spec.variant)
    if variant.file_format is Format.SAFETENSORS:
        save_safetensors(obj, path, variant)
        return
    legacy = spec.serialization == "legacy"
    if spec.tag_as is None:
        save_atomic(obj, path, legacy=legacy)
    else:
        with tagged_as(spec.tag_as):
            save_atomic(obj, path, legacy=legacy)


def saved_report(
    spec: SaveSpec, model: torch.nn.Module, path: Path, started: float
) -> dict[str, Any]:
    """The saver's record: what a correct load must end with (tensors, forward output)."""
    output, output_device = output_digest(model, spec.model)
    return {
        "status": "saved",
        "sha256": artifact_sha256(path),
        "bytes": sum(f.stat().st_size for f in path.rglob("*"))
        if path.is_dir()
        else path.stat().st_size,
        "tensors": fingerprint(model),
        "output_digest": output,
        "output_device": output_device,
        "tagged_as": spec.tag_as,
        "serialization": "safetensors"
        if SaveVariant(spec.variant).file_format is Format.SAFETENSORS
        else spec.serialization,
        "probe": isolation_probe(),
        "torch": torch.__version__,
        "work_s": time.perf_counter() - started,
    }


def verify_checksum(path: Path, expected: str) -> None:
    """Before anything is unpickled: the artifact is the one its saver recorded."""
    actual = artifact_sha256(path)
    if actual != expected:
        from harness.inspect import read_contents

        defects = read_contents(path).defects  # say what changed, where it can be told
        found = f"; {defects[0].describe()}" if defects else ""
        raise ChecksumMismatchError(
            f"{path}: sha256 {actual} differs from the saver's {expected}: the file changed "
            f"after its save{found}"
        )


def raised(exc: BaseException) -> dict[str, Any]:
    """A load report's fields for an exception the load raised (an observation, not a crash)."""
    return {
        "status": "raised",
        "error_class": str(classify_exception(exc)),
        "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": describe(exc)[:MESSAGE_LIMIT],
        "traceback": traceback.format_exc()[-MESSAGE_LIMIT:],
    }


def describe(exc: BaseException) -> str:
    """The exception's message; for torch.distributed.checkpoint's CheckpointException, whose
    text is every failed rank's traceback, each rank's own exception first."""
    failures = getattr(exc, "failures", None)
    if type(exc).__name__ != "CheckpointException" or not isinstance(failures, dict):
        return str(exc)
    ranks = "; ".join(
        f"rank {rank}: {type(error).__name__}: {error}"
        for rank, (error, _trace) in sorted(failures.items())
    )
    return f"{ranks}\n{exc}"


def _checkpoint_exception() -> type[BaseException]:
    """torch.distributed.checkpoint's CheckpointException, a BaseException a load of one process
    raises too (dcp.load with no_dist), where this torch has it."""
    try:
        from torch.distributed.checkpoint.api import CheckpointException
    except ImportError:  # a torch built without torch.distributed
        return Exception
    return CheckpointException


CheckpointError = _checkpoint_exception()


def run_load(spec: LoadSpec) -> dict[str, Any]:
    started = time.perf_counter()
    ctx = LoadContext(spec)
    report: dict[str, Any] = {"probe": isolation_probe(), "torch": torch.__version__}
    try:
        verify_checksum(ctx.path, spec.artifact_sha256)
        model = PERFORM[spec.recipe](ctx)
        if isinstance(model, torch.nn.DataParallel):
            # which GPUs its forward will use: the saver's, for a whole model loaded as pickled
            report["dp_device_ids"] = list(model.device_ids)
        tensors = fingerprint(model)
        output, output_device = output_digest(model, spec.model)
    except (Exception, CheckpointError) as exc:
        report.update(raised(exc))
    else:
        report.update(
            status="loaded", tensors=tensors, output_digest=output, output_device=output_device
        )
    report["before"] = ctx.before
    report["work_s"] = time.perf_counter() - started
    return report
