"""Cells of the matrix and the save artifacts they share.

A cell is one save/load combination proven in two separate processes. Cells that need the same
saved file share one :class:`SaveKey`, so the plan saves it once and loads it many times.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from harness.core.axes import Format, Layout, SaveVariant, Wrapper, mesh_skip_reason
from harness.core.devices import DEFAULT_DEVICE, cuda_index, resolve_device
from harness.core.recipes import RECIPES, Recipe
from harness.core.zoo import ModelSpec, model_spec

# A visibility is an ordered tuple of physical GPU indices given to a process through
# CUDA_VISIBLE_DEVICES; logical cuda:0 is the first listed. The empty tuple is the CPU fallback.
Visibility = tuple[int, ...]
CPU: Visibility = ()


def visibility_label(visibility: Visibility) -> str:
    return "cpu" if not visibility else ",".join(str(index) for index in visibility)


def layout_label(layout: Layout, world: int, wrapper: Wrapper = Wrapper.NONE) -> str:
    """``fsdp2x2``: a distributed layout names its world size; the others run one process (a
    combination that gives one of them more is left out, and named ``singlex3``). A 2-D mesh
    names its dimensions: ``fsdp2[dp2,tp2]`` (fsdp2_tp), ``hsdp[rep2,shard2]``. A wrapper inside
    the layout follows it: ``dp+compile`` is DataParallel(torch.compile(model))."""
    if mesh_skip_reason(layout, world) is None and len(layout.mesh(world)) == 2:
        dims = ",".join(f"{name}{size}" for name, size in layout.mesh(world))
        label = f"{'fsdp2' if layout is Layout.FSDP2_TP else layout}[{dims}]"
    else:
        label = f"{layout}x{world}" if layout.distributed or world != 1 else str(layout)
    return label if wrapper is Wrapper.NONE else f"{label}+{wrapper}"


def device_suffix(device: str, visibility: Visibility) -> str:
    """``@cuda:1`` where the device is not the natural one for the visibility, else nothing."""
    return "" if device == resolve_device(DEFAULT_DEVICE, len(visibility)) else f"@{device}"


@dataclass(frozen=True, kw_only=True)
class SaveKey:
    """Identifies one saved artifact: everything the saver's process depends on."""

    model: str
    layout: Layout
    variant: SaveVariant
    visibility: Visibility = CPU
    device: str = "cpu"  # the logical device the saver's model is on
    training: str = ""  # the training regime of a train_state artifact
    serialization: str = "zip"  # zip (torch>=1.6 default) or legacy
    world: int = 1  # ranks that save it (distributed layouts)
    wrapper: Wrapper = Wrapper.NONE  # what wraps the model inside its layout

    @property
    def id(self) -> str:
        training = f"-{self.training}" if self.training else ""
        legacy = "" if self.serialization == "zip" else f"-{self.serialization}"
        return (
            f"{self.model}-{layout_label(self.layout, self.world, self.wrapper)}"
            f"[{visibility_label(self.visibility)}]"
            f"{device_suffix(self.device, self.visibility)}-{self.variant}{training}{legacy}"
        )

    @property
    def simulated_tag(self) -> str | None:
        """A CUDA device with no GPU visible: the saver stays on the CPU and tags its storages
        with this location, so the checkpoint looks as if saved there (CPU proof of CUDA rules)."""
        if cuda_index(self.device) is not None and not self.visibility:
            return self.device
        return None


@dataclass(frozen=True, kw_only=True)
class Cell:
    model: str
    save_layout: Layout
    load_layout: Layout
    format: Format
    recipe: str
    save_visibility: Visibility = CPU
    load_visibility: Visibility = CPU
    save_device: str = "cpu"  # logical device of the saved storages (resolved, never "default")
    map_location: str = "none"  # a policy name from harness.core.devices.MAP_LOCATIONS
    training: str = ""  # a regime from harness.core.recipes.TRAININGS (train_state cells only)
    serialization: str = "zip"  # zip, or legacy (_use_new_zipfile_serialization=False)
    save_world: int = 1  # ranks of a distributed save layout (1 for the others)
    load_world: int = 1
    save_wrapper: Wrapper = Wrapper.NONE  # inside the save layout
    load_wrapper: Wrapper = Wrapper.NONE

    @cached_property
    def id(self) -> str:
        if self.format is Format.GOLDEN:  # a team's own file: its path is its identity
            return f"golden={self.model}"
        mapping = "" if self.map_location == "none" else f"-map={self.map_location}"
        mapping += f"-train={self.training}" if self.training else ""
        mapping += "" if self.serialization == "zip" else f"-ser={self.serialization}"
        return (
            f"model={self.model}"
            f"-save={layout_label(self.save_layout, self.save_world, self.save_wrapper)}"
            f"[{visibility_label(self.save_visibility)}]"
            f"{device_suffix(self.save_device, self.save_visibility)}"
            f"-load={layout_label(self.load_layout, self.load_world, self.load_wrapper)}"
            f"[{visibility_label(self.load_visibility)}]"
            f"-fmt={self.format}-recipe={self.recipe}{mapping}"
        )

    def __str__(self) -> str:
        return self.id

    @property
    def gpus(self) -> int:
        """How many GPUs the cell's processes see between them (0: the CPU fallback): ``[0]`` ->
        ``[1]`` needs two, ``[1,0]`` -> ``[0,1]`` two, ``[2]`` -> ``[2]`` one."""
        return len(set(self.save_visibility) | set(self.load_visibility))

    @property
    def recipe_spec(self) -> Recipe:
        return RECIPES[self.recipe]

    @property
    def model_spec(self) -> ModelSpec:
        return model_spec(self.model, self.id)

    @property
    def save_key(self) -> SaveKey:
        return SaveKey(
            model=self.model,
            layout=self.save_layout,
            variant=self.recipe_spec.save_variant,
            visibility=self.save_visibility,
            device=self.save_device,
            training=self.training,
            serialization=self.serialization,
            world=self.save_world,
            wrapper=self.save_wrapper,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "save_layout": str(self.save_layout),
            "load_layout": str(self.load_layout),
            "format": str(self.format),
            "recipe": self.recipe,
            "save_visibility": list(self.save_visibility),
            "load_visibility": list(self.load_visibility),
            "save_device": self.save_device,
            "map_location": self.map_location,
            "training": self.training,
            "serialization": self.serialization,
            "save_world": self.save_world,
            "load_world": self.load_world,
            "save_wrapper": str(self.save_wrapper),
            "load_wrapper": str(self.load_wrapper),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        return cls(
            model=data["model"],
            save_layout=Layout(data["save_layout"]),
            load_layout=Layout(data["load_layout"]),
            format=Format(data["format"]),
            recipe=data["recipe"],
            save_visibility=tuple(data["save_visibility"]),
            load_visibility=tuple(data["load_visibility"]),
            save_device=data.get("save_device", "cpu"),
            map_location=data.get("map_location", "none"),
            training=data.get("training", ""),
            serialization=data.get("serialization", "zip"),
            save_world=data.get("save_world", 1),
            load_world=data.get("load_world", 1),
            save_wrapper=Wrapper(data.get("save_wrapper", "none")),
            load_wrapper=Wrapper(data.get("load_wrapper", "none")),
        )
