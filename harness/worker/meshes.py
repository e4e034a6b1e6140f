"""A model on a device mesh in a worker: FSDP2 over a 1-D mesh, the model's tensor-parallel plan
(``parallelize_module``) over one, both on a 2-D mesh ``[dp, tp]``, and HSDP (``fully_shard``
over a 2-D mesh ``[rep, shard]``). The mesh's shape is the layout's
(:meth:`harness.core.axes.Layout.mesh`); the plans are the zoo models' own (``TP_PLANS``).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)

from harness.core.axes import Layout
from harness.worker.fsdp2_api import fully_shard

# A zoo model's tensor-parallel plan, as torchtitan writes a transformer's: the projections into
# the heads and into the MLP's hidden layer split by columns (each rank computes its own heads
# and hidden units), the projections back split by rows (their partial sums all-reduced).
TP_PLANS: dict[str, dict[str, str]] = {
    "block": {
        "attention.wq": "colwise",
        "attention.wk": "colwise",
        "attention.wv": "colwise",
        "attention.wo": "rowwise",
        "feed_forward.w1": "colwise",
        "feed_forward.w3": "colwise",
        "feed_forward.w2": "rowwise",
    },
}
STYLES: dict[str, type[ParallelStyle]] = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}


# Another plan than the one a checkpoint was saved with: each style swapped for the other.
SWAPPED = {"colwise": "rowwise", "rowwise": "colwise"}


def plan(name: str, *, swapped: bool = False) -> dict[str, ParallelStyle]:
    """The model's tensor-parallel plan as parallelize_module takes it; ``swapped``: colwise
    where the model's plan says rowwise and back (a known-bad recipe's)."""
    try:
        styles = TP_PLANS[name]
    except KeyError:
        raise ValueError(f"model {name!r} has no tensor-parallel plan") from None
    return {path: STYLES[SWAPPED[style] if swapped else style]() for path, style in styles.items()}


def device_mesh(device_type: str, layout: Layout, world: int) -> DeviceMesh:
    """The layout's mesh of ``world`` ranks, its dimensions named (``dp``, ``tp``, ...); FSDP2's
    1-D mesh unnamed, as it always was."""
    dims = layout.mesh(world)
    if layout is Layout.FSDP2:
        return init_device_mesh(device_type, (world,))
    return init_device_mesh(
        device_type,
        tuple(size for _, size in dims),
        mesh_dim_names=tuple(dim for dim, _ in dims),
    )


def place(
    model: nn.Module, name: str, layout: Layout, mesh: DeviceMesh, *, swapped: bool = False
) -> None:
    """Shard ``model`` (model ``name`` of the zoo) over ``mesh`` as ``layout`` does, in place:
    tensor parallelism first (its plan ``swapped`` where a recipe says so), then fully_shard
    over the data-parallel dimension."""
    if layout is Layout.TP:
        parallelize_module(model, mesh, plan(name, swapped=swapped))
    elif layout is Layout.FSDP2_TP:
        parallelize_module(model, mesh["tp"], plan(name, swapped=swapped))
        fully_shard(model, mesh=mesh["dp"])
    elif layout in (Layout.FSDP2, Layout.HSDP):  # a 2-D mesh: replicate over rep, shard over shard
        fully_shard(model, mesh=mesh)
    else:
        raise ValueError(f"{layout} is not a layout on a device mesh")
