"""Pickles read inertly: globals are stand-ins, nothing a pickle names is imported or called."""

from __future__ import annotations

import io
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

from harness.inspect.pickles import Stub, children, globals_in, name_of, runs_code, walk

from .checkpoints import Payload


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_payload_is_named_and_never_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps({"w": [1, 2.5], "x": Payload(marker)}, protocol=protocol)
    root, met = walk(io.BytesIO(data))
    assert not marker.exists()
    assert met == ["posix.system"]
    assert isinstance(root["x"], Stub)
    assert name_of(root["x"]) == "posix.system"
    assert root["x"].args == (f"touch {marker}",)
    assert root["w"] == [1, 2.5]
    assert globals_in(data) == ["posix.system"]


def test_a_module_named_by_the_pickle_is_never_imported() -> None:
    data = pickle.dumps(OrderedDict(a=1), protocol=0).replace(b"collections", b"ckptmatrix_nowhere")
    root, met = walk(io.BytesIO(data))
    assert met == ["ckptmatrix_nowhere.OrderedDict"]
    assert "ckptmatrix_nowhere" not in sys.modules
    assert dict(children(root)) == {"a": 1}


class Point:
    def __init__(self) -> None:
        self.x, self.y = 1, [2]


def test_state_items_and_elements_are_kept() -> None:
    root, met = walk(io.BytesIO(pickle.dumps(Point(), protocol=2)))
    assert met[-1].endswith(".Point")
    assert dict(children(root)) == {"x": 1, "y": [2]}


def test_globals_in_reads_memoized_stack_globals_up_to_a_break() -> None:
    data = pickle.dumps([OrderedDict(), OrderedDict(), Payload(Path("m"))], protocol=4)
    assert globals_in(data) == ["collections.OrderedDict", "posix.system"]
    assert globals_in(data[: len(data) // 2]) == ["collections.OrderedDict"]


@pytest.mark.parametrize(
    ("name", "runs"),
    [
        ("posix.system", True),
        ("subprocess.Popen", True),
        ("builtins.eval", True),
        ("builtins.exec", True),
        ("os.path.join", True),
        ("argparse.Namespace", False),
        ("collections.OrderedDict", False),
        ("torch._utils._rebuild_tensor_v2", False),
        ("builtins.set", False),
        ("__builtin__.eval", True),
        ("builtins.getattr", True),
        ("nt.system", True),
        ("runpy.run_path", True),
        ("importlib.import_module", True),
        ("pickle.loads", True),
        ("_pickle.loads", True),
        ("shutil.rmtree", True),
        ("socket.socket", True),
        ("sys.modules", True),
        ("torch.load", True),
        ("numpy.testing._private.utils.runstring", True),
        # TorchScript's own list builders, in every archive torch.jit.save writes
        ("torch.jit._pickle.build_intlist", False),
        ("torch.jit._pickle.restore_type_tag", False),
        # unknown, or harmless alone: refused by a weights_only load, not a danger
        ("functools.partial", False),
        ("pathlib.PosixPath", False),
        ("numpy.core.multiarray._reconstruct", False),
        ("mypkg._pickle.Thing", False),
    ],
)
def test_runs_code(name: str, runs: bool) -> None:
    assert runs_code(name) is runs


def test_a_pickle_nested_too_deep_is_refused_before_unpickling() -> None:
    from harness.inspect.pickles import MAX_NESTING, TooDeep, nesting

    # a tuple two million deep used as a dict key: hashing it overflows the C stack
    bomb = b"}N" + b"\x85" * 2_000_000 + b"K\x01s."
    with pytest.raises(TooDeep, match="nested"):
        walk(io.BytesIO(bomb))
    shallow = pickle.dumps({"a": [list(range(3000))], "b": OrderedDict(c=(1, 2))}, protocol=4)
    assert nesting(io.BytesIO(shallow)) < 10 < MAX_NESTING


def test_attribute_paths_through_a_harmless_module_are_code() -> None:
    assert runs_code("torch.serialization.os.system")
    assert runs_code("torch.distributed.checkpoint.filesystem.os.system")
    assert runs_code("collections.builtins.eval")
    assert not runs_code("mypkg.models.Net")
    assert not runs_code("mypkg.Outer.Inner")


def test_no_stand_in_is_left_in_copyregs_extension_cache() -> None:
    import copyreg

    copyreg.add_extension("collections", "OrderedDict", 0x7FFFFF01)
    try:
        data = pickle.dumps(OrderedDict(a=1), protocol=2)
        assert b"\x82" in data or b"\x83" in data or b"\x84" in data  # an EXT opcode
        root, met = walk(io.BytesIO(data))
        assert met == ["collections.OrderedDict"]
        assert isinstance(root, Stub)
        assert pickle.loads(data) == OrderedDict(a=1)  # the real class, not a stand-in
    finally:
        copyreg.remove_extension("collections", "OrderedDict", 0x7FFFFF01)
