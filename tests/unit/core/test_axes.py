from __future__ import annotations

import pytest

from harness.core.axes import (
    Format,
    Layout,
    SaveVariant,
    mesh_skip_reason,
    parse_enum,
    tensor_parallel_ranks,
)


def test_parse_enum_reads_known_values() -> None:
    assert parse_enum(Layout, "dp", "here") is Layout.DP


def test_parse_enum_names_place_value_and_choices() -> None:
    with pytest.raises(
        ValueError,
        match=r"f\.toml:x: unknown layout 'megatron'; expected one of 'single', 'dp', 'ddp', "
        r"'fsdp2', 'tp', 'fsdp2_tp', 'hsdp'",
    ):
        parse_enum(Layout, "megatron", "f.toml:x")


@pytest.mark.parametrize(
    ("variant", "fmt"),
    [
        (SaveVariant.STATE_DICT, Format.WEIGHTS),
        (SaveVariant.MODULE_STATE_DICT, Format.WEIGHTS),
        (SaveVariant.BOUND_METHOD, Format.WEIGHTS),
        (SaveVariant.WHOLE, Format.WHOLE),
    ],
)
def test_save_variant_format(variant: SaveVariant, fmt: Format) -> None:
    assert variant.file_format is fmt


@pytest.mark.parametrize(
    ("layout", "world", "mesh", "split"),
    [
        (Layout.SINGLE, 1, (), 1),
        (Layout.DDP, 3, (("dp", 3),), 1),
        (Layout.FSDP2, 4, (("dp", 4),), 1),
        (Layout.TP, 3, (("tp", 3),), 3),
        (Layout.FSDP2_TP, 4, (("dp", 2), ("tp", 2)), 2),
        (Layout.FSDP2_TP, 6, (("dp", 3), ("tp", 2)), 2),
        (Layout.HSDP, 4, (("rep", 2), ("shard", 2)), 1),
    ],
)
def test_each_layout_shapes_its_mesh(
    layout: Layout, world: int, mesh: tuple[tuple[str, int], ...], split: int
) -> None:
    assert layout.mesh(world) == mesh
    assert mesh_skip_reason(layout, world) is None
    assert tensor_parallel_ranks(layout, world) == split
    assert layout.tensor_parallel is (layout in (Layout.TP, Layout.FSDP2_TP))


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("layout", [Layout.FSDP2_TP, Layout.HSDP])
def test_a_2d_mesh_needs_two_ranks_on_each_dimension(layout: Layout, world: int) -> None:
    with pytest.raises(ValueError, match=f"an even world size of at least 4.*not {world}"):
        layout.mesh(world)
    reason = mesh_skip_reason(layout, world)
    assert reason is not None
    assert reason.startswith(f"{layout}: a 2-D mesh needs")
    assert tensor_parallel_ranks(layout, world) == 1  # no mesh: nothing split
