"""The zoo's declared traits against the real models' keys (imports torch in this process)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.core.axes import Layout
from harness.core.zoo import MODELS, ModelError, ModelTraits
from harness.worker.fingerprint import forward_digest, output_digest
from harness.worker.models import (
    build,
    call,
    checked_batch,
    example_input,
    leaves,
    noised,
    train,
    training_loss,
    unwrap,
    wrap,
)
from harness.worker.probe import measure_model

CHEAP = [
    "trap",
    "trap_module",
    "dropout",
    "resnet18",
    "tied",
    "mixed_dtypes",
    "weight_norm",
    "block",
]


USER_MODELS = Path(__file__).parents[2] / "data" / "user_model"


@pytest.mark.parametrize("name", CHEAP)
def test_the_zoos_declared_traits_are_what_a_worker_measures(name: str) -> None:
    measured = measure_model(name)
    assert ModelTraits.from_json(measured["traits"]) == MODELS[name].declared
    assert measured["tensors"] == len(build(name, seed=0).state_dict())


@pytest.fixture
def user_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USER_MODELS))


@pytest.mark.usefixtures("user_models")
def test_a_users_model_is_measured_from_its_real_keys() -> None:
    measured = measure_model("ckpt_user_model:build")
    assert measured["traits"] == {
        "top_level_module_attr": True,  # its own attribute named 'module'
        "nested_module_dot": False,
        "example_input": True,
        "tied": True,
        "parametrized": False,
        "stochastic": False,
        "integer_tensors": True,  # BatchNorm's num_batches_tracked, its int32 buffers
        "constants": [],
    }
    model = build("ckpt_user_model:build", seed=0)
    assert (
        model.state_dict()["out.weight"].data_ptr() == model.state_dict()["embed.weight"].data_ptr()
    )
    tokens = example_input("ckpt_user_model:build")
    assert isinstance(tokens, torch.Tensor)
    assert tokens.dtype == torch.int64


@pytest.mark.usefixtures("user_models")
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("ckpt_user_model:broken", "raised RuntimeError: the factory's own bug"),
        ("ckpt_user_model:not_a_model", "returned str, not an nn.Module"),
        ("ckpt_user_model:nowhere", "ckpt_user_model has no function 'nowhere'"),
        ("no_such_package.models:build", "cannot import 'no_such_package.models': ModuleNotFound"),
    ],
)
def test_a_model_that_cannot_be_built_says_which_and_why(name: str, words: str) -> None:
    error = measure_model(name)["error"]
    assert error.startswith(f"model {name}: ")
    assert words in error


@pytest.mark.usefixtures("user_models")
def test_a_model_without_an_example_input_is_perturbed_not_trained() -> None:
    name = "ckpt_user_plain:build"
    assert measure_model(name)["traits"]["example_input"] is False
    fresh, moved = build(name, seed=0), build(name, seed=0)
    train(moved, name, steps=2)
    for (key, before), after in zip(
        fresh.state_dict().items(), moved.state_dict().values(), strict=True
    ):
        assert not torch.equal(before, after), key
    assert output_digest(moved, name) == (None, "cpu")


def test_trap_models_carry_their_traps() -> None:
    keys = set(build("trap", seed=0).state_dict())
    assert {"encoder.submodule.weight", "encoder.bn.num_batches_tracked", "encoder.scale"} <= keys
    assert build("trap", seed=0).state_dict()["encoder.bn.num_batches_tracked"].dtype == torch.int64
    assert build("trap", seed=0).state_dict()["encoder.scale"].dtype == torch.float64
    assert "module.submodule.weight" in build("trap_module", seed=0).state_dict()


def test_seeds_and_training_move_every_tensor() -> None:
    saver = build("trap", seed=0)
    train(saver, "trap", steps=3)
    loader = build("trap", seed=1)
    saved, fresh = saver.state_dict(), loader.state_dict()
    assert saved["encoder.bn.num_batches_tracked"].item() == 3
    same = [k for k in saved if torch.equal(saved[k], fresh[k])]
    assert same == []


def test_wrap_and_unwrap_by_type_not_attribute_name() -> None:
    model = build("trap_module", seed=0)
    wrapped = wrap(model, Layout.DP)
    assert isinstance(wrapped, torch.nn.DataParallel)
    assert unwrap(wrapped) is model
    assert unwrap(model) is model  # its own .module attribute is not a wrapper
    assert next(iter(wrapped.state_dict())).startswith("module.module.")


def test_the_new_traps_carry_their_traps() -> None:
    tied = build("tied", seed=0).state_dict()
    assert tied["out.weight"].data_ptr() == tied["embed.weight"].data_ptr()
    mixed = build("mixed_dtypes", seed=0)
    dtypes = {name: t.dtype for name, t in mixed.state_dict().items()}
    assert dtypes["bf16.weight"] == torch.bfloat16
    assert dtypes["fp16.weight"] == torch.float16
    assert dtypes["steps"] == torch.int64
    assert dtypes["phase"] == torch.complex64
    assert "cache" not in dtypes  # non-persistent
    assert dict(mixed.named_buffers())["cache"].dtype == torch.float32
    norm = build("weight_norm", seed=0).state_dict()
    assert {
        "layer.parametrizations.weight.original0",
        "layer.parametrizations.weight.original1",
    } <= set(norm)


def test_a_non_persistent_buffer_is_marked_in_the_fingerprint() -> None:
    from harness.worker.fingerprint import fingerprint

    records = fingerprint(build("mixed_dtypes", seed=0))
    assert records["cache"]["persistent"] is False
    assert "persistent" not in records["steps"]
    model = build("mixed_dtypes", seed=0)
    model.state_dict = dict  # type: ignore[method-assign,assignment]  # as the assign recipes do
    assert fingerprint(model)["cache"]["persistent"] is False


def test_a_parametrized_model_refuses_to_be_pickled_whole(tmp_path: Path) -> None:
    from harness.core.classify import classify_exception
    from harness.core.outcomes import ErrorClass

    with pytest.raises(RuntimeError) as refused:
        torch.save(build("weight_norm", seed=0), tmp_path / "whole.pt")
    assert classify_exception(refused.value) is ErrorClass.NOT_PICKLABLE


def test_wrappers_stack_inside_the_layout_and_unwrap_by_type() -> None:
    from harness.core.axes import Wrapper
    from harness.worker.fingerprint import fingerprint

    plain = build("trap", seed=0)
    compiled = wrap(build("trap", seed=0), Layout.DP, Wrapper.COMPILE)
    assert next(iter(compiled.state_dict())).startswith("module._orig_mod.")
    assert fingerprint(compiled) == fingerprint(plain)  # the model's own names, bitwise
    checkpointed = wrap(build("trap", seed=0), Layout.SINGLE, Wrapper.CHECKPOINT)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # its hooks strip it
    assert "_checkpoint_wrapped_module" in dict(checkpointed.named_children())
    assert unwrap(checkpointed) is dict(checkpointed.named_children())["_checkpoint_wrapped_module"]
    assert torch.equal(compiled(example_input("trap")), plain(example_input("trap")))


class Renamed(torch.nn.Module):
    """A state_dict hook renames every key: the names differ from named_parameters()."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.register_buffer("mask", torch.ones(2, dtype=torch.bool))
        self._register_state_dict_hook(  # type: ignore[no-untyped-call]
            lambda module, state, prefix, local: {f"v2.{k}": v for k, v in state.items()}
        )


def test_only_a_buffer_registered_non_persistent_is_marked() -> None:
    from harness.worker.fingerprint import fingerprint

    records = fingerprint(Renamed())
    assert all("persistent" not in record for record in records.values())


def test_perturbing_flips_a_boolean_mask() -> None:
    from harness.worker.models import perturb

    model = Renamed()
    perturb(model)
    assert not bool(model.get_buffer("mask").any())


@pytest.mark.usefixtures("user_models")
def test_a_models_extra_state_and_a_sys_exit_are_measured_not_crashed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "odd_models.py").write_text(
        "import sys\n"
        "from torch import nn\n"
        "class Extra(nn.Linear):\n"
        "    def get_extra_state(self):\n"
        "        return {'version': 2}\n"
        "    def set_extra_state(self, state):\n"
        "        pass\n"
        "def extra():\n"
        "    return Extra(2, 2)\n"
        "def exits():\n"
        "    sys.exit('usage: train.py --lr LR')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = measure_model("odd_models:extra")
    assert extra.get("tensors") == 3, extra  # weight, bias, _extra_state
    error = measure_model("odd_models:exits")["error"]
    assert error.startswith("model odd_models:exits: ")
    assert "SystemExit: usage: train.py --lr LR" in error


def test_a_zoo_model_whose_package_is_missing_keeps_its_declared_traits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.worker import probe

    monkeypatch.setattr(probe, "_installed", lambda package: package != "torchvision")
    measured = measure_model("resnet152")  # torchvision's own (the zoo's resnet18 needs none)
    assert measured["declared"] is True
    assert ModelTraits.from_json(measured["traits"]) == MODELS["resnet152"].declared


@pytest.mark.usefixtures("user_models")
def test_constant_entries_and_random_draws_are_measured() -> None:
    traits = measure_model("ckpt_user_model:constants")["traits"]
    # fixed by the constructor, unchanged by training: equal in every build
    assert traits["constants"] == ["counts", "position_ids"]
    assert traits["stochastic"] is True  # its dropout draws from torch's generator
    assert traits["tied"] is True
    assert traits["nested_module_dot"] is True  # module.0.module.weight
    assert traits["top_level_module_attr"] is True
    assert measure_model("trap")["traits"]["stochastic"] is False
    assert measure_model("dropout")["traits"]["stochastic"] is True


@pytest.mark.usefixtures("user_models")
def test_a_model_that_cannot_run_is_stopped_with_its_traceback() -> None:
    error = measure_model("ckpt_user_model:cannot_run")["error"]
    assert error.startswith("model ckpt_user_model:cannot_run: RuntimeError: ")
    assert "\nthe model's traceback (most recent call last):\n" in error
    assert "ckpt_user_model.py" in error
    assert "in forward" in error  # the user's own frame


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    extra: tuple[torch.Tensor, ...]
    note: str = "not a tensor"


class FieldsDict(OrderedDict[str, Any]):
    """A ModelOutput is an ordered dict of its fields that are not None."""


class Cache:
    def __init__(self, keys: list[torch.Tensor]) -> None:
        self.keys = keys


def test_every_tensor_of_an_output_of_any_shape_is_a_leaf() -> None:
    a, b, c = torch.ones(2), torch.zeros(3), torch.arange(4)
    assert [p for p, _ in leaves(a)] == [""]
    assert [p for p, _ in leaves((a, [b, c]))] == ["0", "1.0", "1.1"]
    assert [p for p, _ in leaves({"x": a, "y": None})] == ["x"]
    assert [p for p, _ in leaves(Output(a, (b, c)))] == ["logits", "extra.0", "extra.1"]
    model_output = FieldsDict(logits=a, past_key_values=Cache([b, c]))
    assert [p for p, _ in leaves(model_output)] == [
        "logits",
        "past_key_values.keys.0",
        "past_key_values.keys.1",
    ]
    shared = [a]
    assert [p for p, _ in leaves({"one": shared, "two": shared})] == ["one.0"]  # seen once


def test_the_output_digest_compares_every_leaf() -> None:
    a, b = torch.ones(2), torch.zeros(3)
    same = forward_digest(Output(a, (b,)), "m")
    assert same == forward_digest(Output(a.clone(), (b.clone(),)), "m")
    assert same[0] != forward_digest(Output(a, (b + 1,)), "m")[0]  # a later leaf differs
    assert same[1] == "cpu"
    with pytest.raises(ModelError, match="its forward returned no tensor"):
        forward_digest({"text": "none"}, "m")


def test_the_training_loss_takes_every_floating_point_leaf_with_a_gradient() -> None:
    weight = torch.ones(3, requires_grad=True)
    output = {"logits": weight * 2, "ids": torch.arange(3), "detached": torch.ones(3)}
    loss = training_loss(output, "m")
    assert loss.item() == 4.0  # only logits: (2**2).mean()
    loss.backward()  # type: ignore[no-untyped-call]
    assert weight.grad is not None
    with pytest.raises(ModelError, match="no floating-point tensor that depends on its param"):
        training_loss({"ids": torch.arange(3)}, "m")


def test_example_inputs_may_be_positional_or_keyword_arguments() -> None:
    class TwoInputs(torch.nn.Module):
        def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
            return x * scale

    model, x, scale = TwoInputs(), torch.ones(2), torch.full((2,), 3.0)
    assert torch.equal(call(model, {"x": x, "scale": scale}), x * 3)
    assert checked_batch([x, x], "m") == (x, x)
    with pytest.raises(ModelError, match="returned str; return a tensor, a tuple"):
        checked_batch("tokens", "m")
    with pytest.raises(ModelError, match="whose keys are not all strings"):
        checked_batch({1: x}, "m")
    with pytest.raises(ModelError, match="returned no tensor"):
        checked_batch((1, 2), "m")
    noisy = noised({"x": x, "ids": torch.arange(2)}, torch.Generator().manual_seed(0))
    assert isinstance(noisy, dict)
    assert not torch.equal(noisy["x"], x)
    assert torch.equal(noisy["ids"], torch.arange(2))  # integers are used as they are


@pytest.mark.usefixtures("user_models")
def test_a_model_whose_library_is_missing_is_unavailable_not_an_error() -> None:
    measured = measure_model("ckpt_user_model:needs_a_missing_library")
    traits = ModelTraits.from_json(measured["traits"])
    assert traits.unavailable == (
        "ckpt_user_model:needs_a_missing_library needs ckpt_matrix_no_such_library, which the "
        "workers' interpreter lacks (pip install ckpt_matrix_no_such_library beside torch, or "
        "leave the model out)"
    )
    # the user's own module not found is a mistake in the model's name: an error
    assert "error" in measure_model("ckpt_user_model_nowhere:build")


def test_the_models_the_zoo_says_have_a_tensor_parallel_plan_have_one_of_their_layers() -> None:
    from torch import nn

    from harness.worker.meshes import STYLES, TP_PLANS

    assert set(TP_PLANS) == {name for name, spec in MODELS.items() if spec.tensor_parallel}
    for name, plan in TP_PLANS.items():
        model = build(name, seed=0)
        for path, style in plan.items():
            assert isinstance(model.get_submodule(path), nn.Linear), (name, path)
            assert style in STYLES
        # every linear layer is split: none is left whole on every rank by mistake
        linear = {path for path, module in model.named_modules() if isinstance(module, nn.Linear)}
        assert linear == set(plan), name


def test_the_block_declares_the_heads_a_tensor_parallel_degree_must_divide() -> None:
    from harness.worker.models import Attention

    attention = build("block", seed=0).get_submodule("attention")
    assert isinstance(attention, Attention)
    heads = attention.wq.out_features // attention.head_dim
    assert MODELS["block"].tensor_parallel_units == heads == 4


def test_another_plan_swaps_every_style_of_the_models_own() -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from harness.worker.meshes import TP_PLANS, plan

    own, other = plan("block"), plan("block", swapped=True)
    assert own.keys() == other.keys() == TP_PLANS["block"].keys()
    for path, style in TP_PLANS["block"].items():
        expected = RowwiseParallel if style == "colwise" else ColwiseParallel
        assert type(other[path]) is expected, path
        assert type(own[path]) is not expected, path


def test_the_zoos_resnet18_is_torchvisions_bit_for_bit_without_torchvision() -> None:
    """The same seed gives torchvision's resnet18 state_dict, key for key and bit for bit, and
    the same forward output; the zoo's needs no torchvision to build it."""
    torchvision = pytest.importorskip("torchvision", reason="compared with torchvision's own")

    ours = build("resnet18", seed=3).eval()
    torch.manual_seed(3)
    theirs = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference)
    assert all(torch.equal(mine[key], reference[key]) for key in mine)
    batch = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(batch), theirs(batch))
    assert not MODELS["resnet18"].needs_torchvision
    assert type(ours).__module__ == "harness.worker.models"
