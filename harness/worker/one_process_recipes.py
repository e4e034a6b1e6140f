"""How each recipe in :mod:`harness.core.recipes` is performed, as people write it.

Every function takes the load context and returns the model it ends up with, in the cell's load
layout. Known-bad recipes are written as their tutorials write them; the oracle says how they
should break. Files are loaded with ``weights_only=True`` except where a recipe is about whole
pickled models, and every file's sha256 is verified against the saver's record before any load.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from harness.core.axes import Layout, Wrapper
from harness.core.classify import MetaTemplateError
from harness.core.jobspec import LOAD_SEED, LoadSpec, rank_path
from harness.core.recipes import registrar
from harness.worker.fingerprint import fingerprint
from harness.worker.models import build, unwrap, wrap
from harness.worker.training import resume

# The save_pretrained layout's index, beside its shards.
INDEX = "model.safetensors.index.json"


def map_location_arg(policy: str, saved_tag: str) -> Any:
    """The object each map_location policy of harness.core.devices hands to ``torch.load``."""
    arguments: dict[str, Any] = {
        "none": None,
        "cpu": "cpu",
        "cuda0": "cuda:0",
        "device_cuda0": torch.device("cuda:0"),
        "remap_saved_to_cpu": {saved_tag: "cpu"},
        "remap_cuda0_to_cpu": {"cuda:0": "cpu"},
        "remap_saved_to_cuda0": {saved_tag: "cuda:0"},
        "callable_identity": lambda storage, location: storage,
    }
    return arguments[policy]


class LoadContext:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.path = Path(spec.artifact_path)
        self.layout = Layout(spec.layout)
        # Fingerprint of the first fresh model a recipe builds, before anything is loaded into it.
        self.before: dict[str, dict[str, Any]] | None = None

    def fresh(self, layout: Layout | None = None) -> nn.Module:
        """A new model from the loader's seed, on logical cuda:0 where a GPU is visible (else the
        CPU), wrapped for ``layout`` (default: the cell's)."""
        fresh = build(self.spec.model, seed=LOAD_SEED).to(self.device)
        model = wrap(fresh, layout or self.layout, Wrapper(self.spec.wrapper))
        if self.before is None:
            self.before = fingerprint(model)
        return model

    @property
    def device(self) -> str:
        """Where the loader's model lives: logical cuda:0 where a GPU is visible, else the CPU."""
        return "cuda:0" if torch.cuda.device_count() > 0 else "cpu"

    @property
    def map_location(self) -> Any:
        return map_location_arg(self.spec.map_location, self.spec.saved_tag)

    def weights(self) -> Any:
        return torch.load(self.path, map_location=self.map_location, weights_only=True)

    def whole(self) -> nn.Module:
        # A whole pickled model: allowed only because this run wrote the file and its checksum
        # was verified before this call (see harness.worker.one_process).
        model = torch.load(self.path, map_location=self.map_location, weights_only=False)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{self.path} holds {type(model).__name__}, not a model")
        return model

    def default_load(self) -> Any:
        """``torch.load(path)`` with the installed torch's own defaults, as tutorials write it."""
        return torch.load(self.path, map_location=self.map_location)


# How each recipe of one process is performed, filed where it is written.
PERFORM: dict[str, Callable[[LoadContext], nn.Module]] = {}
performs = registrar(PERFORM, "harness.worker.one_process_recipes")


@performs("as_saved", "unfixed_prefix", "ddp_unfixed_prefix", "wrapper_unfixed_prefix")
def _as_saved(ctx: LoadContext) -> nn.Module:
    model = ctx.fresh()
    model.load_state_dict(ctx.weights())
    return model


@performs("dcp_no_dist")
def _dcp_no_dist(ctx: LoadContext) -> nn.Module:
    """A sharded checkpoint into a plain model in this one process: no process group. DCP
    reads .metadata with pickle: the directory's checksum was verified before this call."""
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    model = ctx.fresh()
    state = {"model": model.state_dict()}
    dcp_load(state, checkpoint_id=str(ctx.path), no_dist=True)  # fills the tensors in place
    model.load_state_dict(state["model"])
    return model


@performs("dcp_meta_to_empty", "dcp_meta_template")
def _dcp_meta(ctx: LoadContext) -> nn.Module:
    """The model built on the meta device; the correct recipe gives it storage (to_empty)
    before dcp.load, the known-bad one hands dcp.load the meta template."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    with torch.device("meta"):
        model = wrap(build(ctx.spec.model, seed=LOAD_SEED), ctx.layout, Wrapper(ctx.spec.wrapper))
    if ctx.spec.recipe == "dcp_meta_to_empty":
        model.to_empty(device=ctx.device)
    state = {"model": model.state_dict()}
    try:
        dcp_load(state, checkpoint_id=str(ctx.path), no_dist=True)
    except (ValueError, CheckpointException) as exc:  # CheckpointException: a BaseException
        meta = [key for key, value in state["model"].items() if value.is_meta]
        if not meta:
            raise
        raise MetaTemplateError(
            f"dcp.load(no_dist=True) of a template with {len(meta)} tensor(s) on the meta "
            f"device ({meta[0]}, ...): {str(exc).strip().splitlines()[-1]} (give the model "
            "storage first: model.to_empty(device=...))"
        ) from exc
    model.load_state_dict(state["model"], assign=True)
    return model


@performs("sharded_state_dict")
def _sharded_state_dict(ctx: LoadContext) -> nn.Module:
    import torch.distributed.tensor  # noqa: F401  (what the first error asks for)

    return _as_saved(ctx)


@performs("local_shards_stitched")
def _local_shards_stitched(ctx: LoadContext) -> nn.Module:
    """Every rank's file of local pieces, in rank order, each tensor stitched back as a
    hand-written merge does it (:func:`stitched`); weights_only: plain tensors."""
    files: list[Path] = []
    while (path := rank_path(ctx.path, len(files))).is_file():
        files.append(path)
    parts = [torch.load(path, map_location=ctx.map_location, weights_only=True) for path in files]
    model = ctx.fresh()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    model.load_state_dict(
        {
            key: stitched(shapes.get(key, tuple(value.shape)), [part[key] for part in parts])
            for key, value in parts[0].items()
        }
    )
    return model


def stitched(shape: tuple[int, ...], pieces: list[torch.Tensor]) -> torch.Tensor:
    """A tensor of ``shape`` from its pieces in rank order: each dimension cut into as many
    parts as rank 0's piece fits into it, the first parts taken as a row-major grid (a piece as
    large as the tensor: rank 0's alone). Right where ranks split in that order (a 1-D mesh; a
    replicate x shard mesh); on a 2-D [dp, tp] mesh the order is not rank order."""
    grid = [
        -(-size // part) if part else 1 for size, part in zip(shape, pieces[0].shape, strict=False)
    ]
    needed = 1
    for count in grid:
        needed *= count
    if len(pieces) < needed:
        raise ValueError(f"{needed} pieces make a tensor of {shape}, found {len(pieces)}")

    def join(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
        if dim == len(grid):
            return parts[0]
        step = len(parts) // grid[dim]
        rows = [join(parts[i * step : (i + 1) * step], dim + 1) for i in range(grid[dim])]
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=dim)

    return join(pieces[:needed], 0)


@performs("dcp_to_torch_save")
def _dcp_to_torch_save(ctx: LoadContext) -> nn.Module:
    """DCP's own converter to one torch.save file (it reads .metadata with pickle: the
    directory's checksum was verified before this call), then a weights_only load."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    converted = Path(ctx.spec.report_path).with_name("converted.pt")
    dcp_to_torch_save(ctx.path, converted)
    model = ctx.fresh()
    model.load_state_dict(torch.load(converted, weights_only=True)["model"])
    return model


@performs("as_saved_whole")
def _as_saved_whole(ctx: LoadContext) -> nn.Module:
    return ctx.whole()


def _into_unwrapped(ctx: LoadContext, state_dict: Any) -> nn.Module:
    model = ctx.fresh()
    unwrap(model).load_state_dict(state_dict)
    return model


@performs("module_state_dict", "full_state_dict", "ddp_module_state_dict")
def _module_state_dict(ctx: LoadContext) -> nn.Module:
    return _into_unwrapped(ctx, ctx.weights())


@performs("wrap_loader")
def _wrap_loader(ctx: LoadContext) -> nn.Module:
    wrapped = nn.DataParallel(ctx.fresh(Layout.SINGLE))
    wrapped.load_state_dict(ctx.weights())
    return wrapped.module


def _stripped(ctx: LoadContext, state_dict: Any, *prefixes: str) -> nn.Module:
    """``consume_prefix_in_state_dict_if_present`` for each prefix in turn (outermost first, as
    the wrappers stacked them), then into the unwrapped model."""
    for prefix in prefixes:
        consume_prefix_in_state_dict_if_present(state_dict, prefix)
    return _into_unwrapped(ctx, state_dict)


@performs("strip_prefix", "strip_prefix_unwrapped", "ddp_strip_prefix")
def _strip_prefix(ctx: LoadContext) -> nn.Module:
    return _stripped(ctx, ctx.weights(), "module.")


@performs("whole_module")
def _whole_module(ctx: LoadContext) -> nn.Module:
    inner = ctx.whole().module
    if not isinstance(inner, nn.Module):
        raise TypeError(f"{ctx.path}: the loaded model's .module is not a model")
    return inner


@performs("save_method")
def _save_method(ctx: LoadContext) -> nn.Module:
    model = ctx.fresh()
    model.load_state_dict(ctx.default_load())
    return model


@performs("assign_dict")
def _assign_dict(ctx: LoadContext) -> nn.Module:
    model = ctx.fresh()
    model.state_dict = ctx.weights()  # type: ignore[method-assign]  # the bug under test
    return model


@performs("assign_method")
def _assign_method(ctx: LoadContext) -> nn.Module:
    loaded = ctx.whole()
    model = ctx.fresh()
    model.state_dict = loaded.state_dict  # type: ignore[method-assign]  # the bug under test
    return model


@performs("slice_prefix")
def _slice_prefix(ctx: LoadContext) -> nn.Module:
    return _into_unwrapped(ctx, {key[7:]: value for key, value in ctx.weights().items()})


@performs("replace_prefix")
def _replace_prefix(ctx: LoadContext) -> nn.Module:
    state_dict = ctx.weights()
    return _into_unwrapped(
        ctx, {key.replace("module.", ""): value for key, value in state_dict.items()}
    )


@performs("whole_default_load")
def _whole_default_load(ctx: LoadContext) -> nn.Module:
    model = ctx.default_load()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{ctx.path} holds {type(model).__name__}, not a model")
    return model


@performs("safetensors_file", "safetensors_unfixed_prefix")
def _safetensors_file(ctx: LoadContext) -> nn.Module:
    from safetensors.torch import load_file

    model = ctx.fresh()
    model.load_state_dict(load_file(ctx.path, device=ctx.device))
    return model


@performs("safetensors_strip_prefix")
def _safetensors_strip_prefix(ctx: LoadContext) -> nn.Module:
    from safetensors.torch import load_file

    return _stripped(ctx, load_file(ctx.path, device=ctx.device), "module.")


@performs("safetensors_model")
def _safetensors_model(ctx: LoadContext) -> nn.Module:
    from safetensors.torch import load_model

    model = ctx.fresh()
    load_model(unwrap(model), ctx.path, device=ctx.device)
    return model


@performs("safetensors_index", "safetensors_dcp_hf", "safetensors_dcp_hf_in_place")
def _safetensors_index(ctx: LoadContext) -> nn.Module:
    return _sharded_safetensors(ctx, strict=False)


@performs("safetensors_index_strict")
def _safetensors_index_strict(ctx: LoadContext) -> nn.Module:
    return _sharded_safetensors(ctx, strict=True)


def _sharded_safetensors(ctx: LoadContext, *, strict: bool) -> nn.Module:
    """Every shard the index names, each holding exactly the keys the index maps to it, into
    the unwrapped model; with ``strict=False`` every key the model has and the checkpoint lacks
    must be tied to one it holds (a tie the shards keep once), or the load fails as
    load_state_dict's own check does."""
    from safetensors import safe_open

    index = json.loads((ctx.path / INDEX).read_text())
    mapped: dict[str, set[str]] = {}
    for key, shard in index["weight_map"].items():
        mapped.setdefault(shard, set()).add(key)
    state: dict[str, torch.Tensor] = {}
    for shard, keys in sorted(mapped.items()):
        with safe_open(str(ctx.path / shard), framework="pt", device=ctx.device) as opened:
            held = set(opened.keys())
            if held != keys:
                raise ValueError(
                    f"{ctx.path / shard}: {INDEX} maps {len(keys)} key(s) here and the shard "
                    f"holds {len(held)}; these differ: {sorted(held ^ keys)[:4]} (a stale index)"
                )
            state.update({key: opened.get_tensor(key) for key in sorted(keys)})
    model = ctx.fresh()
    target = unwrap(model)
    if strict:
        target.load_state_dict(state)
        return model
    missing, unexpected = target.load_state_dict(state, strict=False)
    tensors = {
        name: tensor
        for named in (target.named_parameters(remove_duplicate=False), target.named_buffers())
        for name, tensor in named
    }
    loaded = {id(tensors[key]) for key in state if key in tensors}
    untied = [key for key in missing if id(tensors.get(key)) not in loaded]
    if untied or unexpected:
        raise RuntimeError(
            f"Error(s) in loading state_dict for {type(target).__name__}: Missing key(s) in the "
            f"shards, tied to none they hold: {untied}; Unexpected key(s): {unexpected}"
        )
    return model


@performs("safetensors_shards_lenient")
def _safetensors_shards_lenient(ctx: LoadContext) -> nn.Module:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for shard in sorted(ctx.path.glob("*.safetensors")):
        state.update(load_file(shard, device=ctx.device))
    model = ctx.fresh()
    unwrap(model).load_state_dict(state, strict=False)
    return model


@performs("strip_orig_mod")
def _strip_orig_mod(ctx: LoadContext) -> nn.Module:
    return _stripped(ctx, ctx.weights(), "_orig_mod.")


@performs("strip_stacked_prefixes")
def _strip_stacked_prefixes(ctx: LoadContext) -> nn.Module:
    return _stripped(ctx, ctx.weights(), "module.", "_orig_mod.")


@performs("dcp_model_state_dict")
def _dcp_model_state_dict(ctx: LoadContext) -> nn.Module:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    model = ctx.fresh()
    set_model_state_dict(model, ctx.weights())
    return model


@performs("resume", "resume_namespace_args")
def _resume(ctx: LoadContext) -> nn.Module:
    model = ctx.fresh()
    resume(model, ctx.weights(), ctx.spec.training, ctx.spec.model)
    return model


@performs("resume_without_rng")
def _resume_without_rng(ctx: LoadContext) -> nn.Module:
    model = ctx.fresh()
    resume(model, ctx.weights(), ctx.spec.training, ctx.spec.model, rng=False)
    return model


@performs("resume_safe_globals")
def _resume_safe_globals(ctx: LoadContext) -> nn.Module:
    model = ctx.fresh()
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = ctx.weights()
    resume(model, state, ctx.spec.training, ctx.spec.model)
    return model
