"""Expand scenarios into the frozen cells of the matrix; say which combinations were left out."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from harness.core.axes import Layout, mesh_skip_reason, tensor_parallel_ranks
from harness.core.cell import Cell, Visibility, layout_label, visibility_label
from harness.core.devices import cuda_index, resolve_device
from harness.core.recipes import RECIPES
from harness.core.scenarios import Scenario
from harness.core.selection import selector
from harness.core.visibility import pairs_for_mode
from harness.core.zoo import MODELS


@dataclass(frozen=True, kw_only=True)
class Omitted:
    """A combination a scenario named that is not a cell, and why."""

    cell: Cell  # the combination, as a cell that is not run
    reason: str
    scenario: str

    @property
    def combination(self) -> str:
        """Its id (built when asked: most listings never show what was left out)."""
        return self.cell.id


@dataclass(frozen=True, kw_only=True)
class Matrix:
    cells: tuple[Cell, ...]
    omitted: tuple[Omitted, ...]


def expand(
    scenarios: Iterable[Scenario],
    *,
    subsets: Sequence[Visibility] = (),
    select: str | None = None,
) -> Matrix:
    """Cells in scenario order, each id once; ``subsets`` are the GPU visibilities chosen by the
    policy (none: the CPU fallback); ``select`` is a ``-k`` expression, as pytest's: the ids it
    keeps (:mod:`harness.core.selection`; a plain word keeps the ids containing it)."""
    keep = selector(select or "")
    cells: dict[str, Cell] = {}
    omitted: list[Omitted] = []
    for scenario in scenarios:
        for axes in _combinations(scenario, subsets):
            (save_vis, load_vis), device = axes["visibilities"], axes["device"]
            cell = Cell(
                model=axes["model"],
                save_layout=axes["save"],
                load_layout=axes["load"],
                format=axes["format"],
                recipe=axes["recipe"],
                save_visibility=save_vis,
                load_visibility=load_vis,
                save_device=resolve_device(device, len(save_vis)),
                map_location=axes["map_location"],
                training=axes["training"],
                serialization=axes["serialization"],
                save_world=axes["save_world"],
                load_world=axes["load_world"],
                save_wrapper=axes["save_wrapper"],
                load_wrapper=axes["load_wrapper"],
            )
            if select and not keep(cell.id):
                continue
            reason = RECIPES[cell.recipe].skip_reason(
                save=cell.save_layout,
                load=cell.load_layout,
                fmt=cell.format,
                training=cell.training,
                wrappers=(cell.save_wrapper, cell.load_wrapper),
            )
            reason = (
                reason
                or world_skip_reason(cell)
                or device_skip_reason(cell)
                or resume_skip_reason(cell)
            )
            if reason is not None:
                omitted.append(Omitted(cell=cell, reason=reason, scenario=scenario.name))
                continue
            cells.setdefault(cell.id, cell)
    return Matrix(cells=tuple(cells.values()), omitted=tuple(omitted))


def _combinations(scenario: Scenario, subsets: Sequence[Visibility]) -> Iterator[dict[str, Any]]:
    """Every combination of a scenario's axes, each as a mapping from axis name to value."""
    axes: dict[str, Sequence[Any]] = {
        "model": scenario.models,
        "save": scenario.save_layouts,
        "load": scenario.load_layouts,
        "format": scenario.formats,
        "recipe": scenario.recipes,
        "visibilities": pairs_for_mode(scenario.visibility, subsets),
        "device": scenario.save_devices,
        "map_location": scenario.map_locations,
        "training": scenario.trainings,
        "serialization": scenario.serializations,
        "save_world": scenario.save_world_sizes,
        "load_world": scenario.load_world_sizes,
        "save_wrapper": scenario.save_wrappers,
        "load_wrapper": scenario.load_wrappers,
    }
    for values in itertools.product(*axes.values()):
        yield dict(zip(axes, values, strict=True))


def world_skip_reason(cell: Cell) -> str | None:
    """A world size belongs to a distributed layout; the others run one process. A distributed
    layout runs its ranks on the CPU with gloo, or one rank per GPU of its subset with NCCL."""
    for role, layout, world, visibility in (
        ("save", cell.save_layout, cell.save_world, cell.save_visibility),
        ("load", cell.load_layout, cell.load_world, cell.load_visibility),
    ):
        if not layout.distributed and world != 1:
            spread = ", ".join(str(each) for each in Layout if each.distributed)
            return f"{role} layout {layout} runs one process; world sizes apply to {spread}"
        if (reason := mesh_skip_reason(layout, world)) is not None:
            return f"{role} layout {reason}"
        if layout.tensor_parallel and not cell.model_spec.tensor_parallel:
            planned = ", ".join(name for name, spec in MODELS.items() if spec.tensor_parallel)
            return (
                f"{role} layout {layout} shards a model by its tensor-parallel plan; "
                f"{cell.model} has none (the zoo's {planned} has)"
            )
        if (reason := split_skip_reason(cell, role, layout, world)) is not None:
            return reason
        if layout.distributed and visibility and len(visibility) != world:
            return (
                f"{role} layout {layout} at {world} ranks runs one rank per GPU (NCCL); the "
                f"subset [{visibility_label(visibility)}] has {len(visibility)}"
            )
    return None


def split_skip_reason(cell: Cell, role: str, layout: Layout, world: int) -> str | None:
    """A tensor-parallel degree must divide the model's layers (its attention heads); the one
    recipe about a degree that does not (``uneven_split``) takes its loader there, and only
    there."""
    units = cell.model_spec.tensor_parallel_units
    degree = tensor_parallel_ranks(layout, world)
    uneven = units % degree != 0
    label = layout_label(layout, world)
    recipe = cell.recipe_spec
    if recipe.uneven_split and role == "load" and not uneven:
        return (
            f"recipe={recipe.name} is about a tensor-parallel degree that does not divide "
            f"{cell.model}'s {units} heads; load={label} divides them"
        )
    if uneven and not (recipe.uneven_split and role == "load"):
        about = ", ".join(name for name, each in RECIPES.items() if each.uneven_split)
        return (
            f"{role} layout {label} splits {cell.model}'s {units} heads over {degree} ranks, "
            f"unevenly (recipe={about} is the cell for that)"
        )
    return None


def resume_skip_reason(cell: Cell) -> str | None:
    """Resume equivalence needs the same training arithmetic before and after the stop.
    DataParallel over several GPUs splits each batch across replicas (per-replica BatchNorm
    statistics), so training under it differs from training under another layout or subset."""
    if not cell.training:
        return None
    save_split = cell.save_layout is Layout.DP and len(cell.save_visibility) > 1
    load_split = cell.load_layout is Layout.DP and len(cell.load_visibility) > 1
    same = (cell.save_layout, len(cell.save_visibility)) == (
        cell.load_layout,
        len(cell.load_visibility),
    )
    if (save_split or load_split) and not same:
        return (
            "resume equivalence needs the same training arithmetic: DataParallel over several "
            "GPUs splits batches (per-replica BatchNorm statistics)"
        )
    saved = tensor_parallel_ranks(cell.save_layout, cell.save_world)
    loading = tensor_parallel_ranks(cell.load_layout, cell.load_world)
    if saved != loading:
        return (
            "resume equivalence needs the same training arithmetic: tensor parallelism over "
            f"{saved} rank(s) at the save and {loading} at the load sums each layer's products "
            "in other parts (the checkpoint itself reshards between them bitwise: dcp_reshard)"
        )
    return None


def device_skip_reason(cell: Cell) -> str | None:
    """Why the save device cannot exist under the save visibility, or None."""
    index = cuda_index(cell.save_device)
    visible = len(cell.save_visibility)
    if index is None or visible == 0:  # cpu, or a simulated tag on the CPU fallback
        return None
    if index >= visible:
        return (
            f"save device {cell.save_device} needs {index + 1} GPUs in the save subset, "
            f"it has {visible}"
        )
    if cell.save_layout is Layout.DP and index != 0:
        return "DataParallel keeps its parameters on device_ids[0], logical cuda:0"
    return None
