from __future__ import annotations

from harness.core.axes import Format, Layout, SaveVariant, Wrapper
from harness.core.cell import Cell, SaveKey, visibility_label
from harness.core.devices import DeviceMap


def make(**changes: object) -> Cell:
    fields: dict[str, object] = {
        "model": "trap",
        "save_layout": Layout.DP,
        "load_layout": Layout.SINGLE,
        "format": Format.WEIGHTS,
        "recipe": "strip_prefix",
    }
    fields.update(changes)
    return Cell(**fields)  # type: ignore[arg-type]


def test_id_is_readable_and_names_every_axis() -> None:
    assert make().id == "model=trap-save=dp[cpu]-load=single[cpu]-fmt=weights-recipe=strip_prefix"
    gpu = make(save_visibility=(1, 0), load_visibility=(2,), save_device="cuda:0")
    assert gpu.id == "model=trap-save=dp[1,0]-load=single[2]-fmt=weights-recipe=strip_prefix"
    assert str(gpu) == gpu.id
    # devices and map_location show only where they are not the defaults
    moved = make(save_visibility=(0, 1), save_device="cuda:1", map_location="cpu")
    assert moved.id == (
        "model=trap-save=dp[0,1]@cuda:1-load=single[cpu]-fmt=weights-recipe=strip_prefix-map=cpu"
    )
    assert make(save_device="cuda:1").id.startswith("model=trap-save=dp[cpu]@cuda:1-load=")
    assert make(save_visibility=(0,)).id.startswith("model=trap-save=dp[0]@cpu-load=")


def test_a_cell_needs_the_gpus_its_processes_see_between_them() -> None:
    assert make().gpus == 0  # the CPU fallback
    assert make(save_visibility=(0,), load_visibility=()).gpus == 1
    assert make(save_visibility=(2,), load_visibility=(2,)).gpus == 1
    assert make(save_visibility=(0,), load_visibility=(1,)).gpus == 2
    assert make(save_visibility=(1, 0), load_visibility=(0, 1)).gpus == 2
    assert make(save_visibility=(0, 1, 2, 3), load_visibility=(3,)).gpus == 4


def test_visibility_order_matters() -> None:
    assert make(save_visibility=(0, 1)).id != make(save_visibility=(1, 0)).id
    assert DeviceMap().env_value((1, 0)) == "1,0"
    assert DeviceMap().env_value(()) == ""
    assert visibility_label(()) == "cpu"


def test_save_key_follows_the_recipe_variant() -> None:
    assert make().save_key == SaveKey(
        model="trap", layout=Layout.DP, variant=SaveVariant.STATE_DICT
    )
    assert make(recipe="module_state_dict").save_key.variant is SaveVariant.MODULE_STATE_DICT
    assert make(recipe="save_method").save_key.id == "trap-dp[cpu]-bound_method"


def test_json_round_trip() -> None:
    cell = make(save_visibility=(3, 1), load_visibility=())
    assert Cell.from_json(cell.to_json()) == cell


def test_a_distributed_layout_names_its_world_size() -> None:
    fsdp = make(
        save_layout=Layout.FSDP2,
        load_layout=Layout.FSDP2,
        format=Format.DCP,
        recipe="dcp_reshard",
        save_world=2,
        load_world=3,
    )
    assert fsdp.id == ("model=trap-save=fsdp2x2[cpu]-load=fsdp2x3[cpu]-fmt=dcp-recipe=dcp_reshard")
    assert fsdp.save_key.world == 2
    assert fsdp.save_key.variant is SaveVariant.DCP
    assert fsdp.save_key.id == "trap-fsdp2x2[cpu]-dcp"
    assert Cell.from_json(fsdp.to_json()) == fsdp
    # results written before world sizes existed read as one process each
    old = {k: v for k, v in make().to_json().items() if not k.endswith("_world")}
    assert Cell.from_json(old) == make()


def test_a_wrapper_follows_its_layout_in_the_id() -> None:
    wrapped = make(
        save_layout=Layout.DP,
        load_layout=Layout.SINGLE,
        recipe="strip_stacked_prefixes",
        save_wrapper=Wrapper.COMPILE,
        load_wrapper=Wrapper.CHECKPOINT,
    )
    assert wrapped.id == (
        "model=trap-save=dp+compile[cpu]-load=single+checkpoint[cpu]-fmt=weights"
        "-recipe=strip_stacked_prefixes"
    )
    assert wrapped.save_key.wrapper is Wrapper.COMPILE
    assert wrapped.save_key.id == "trap-dp+compile[cpu]-state_dict"
    assert Cell.from_json(wrapped.to_json()) == wrapped
    # results written before wrappers existed read as unwrapped
    old = {k: v for k, v in make().to_json().items() if not k.endswith("_wrapper")}
    assert Cell.from_json(old) == make()
