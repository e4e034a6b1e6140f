"""How a DCP directory's tensors were split, read inertly from the chunks in .metadata: checked
against a save by 4 real ranks and against DCP's own reading of the same .metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.inspect import INTACT, inspect_path, read_contents
from harness.inspect.dcp_dir import split_of

from . import checkpoints, dcp_ranks


@pytest.fixture(scope="module")
def saved_by_4_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dcp_ranks.save(tmp_path_factory.mktemp("ranks"))


def test_one_process_saves_every_tensor_whole(tmp_path: Path) -> None:
    contents = read_contents(checkpoints.dcp_dir(tmp_path))
    assert contents.tensors
    assert {tensor.split for tensor in contents.tensors} == {"whole (one chunk)"}
    (note,) = [note for note in contents.notes if "shard file" in note]
    assert note.startswith("1 shard file(s) (__0_0.distcp): saved by at least 1 rank(s)")


@pytest.mark.slow
def test_four_ranks_splits_are_named_from_the_chunks(saved_by_4_ranks: Path) -> None:
    found = inspect_path(saved_by_4_ranks)
    assert found.exit_code == INTACT, found.describe()
    split = {tensor.path: tensor.split for tensor in found.contents.tensors}
    assert split == {
        "rows": "4 chunks along dim 0",
        "cols": "4 chunks along dim 1",
        # torch.chunk's split of 5 rows in 4: the empty last chunk is recorded too
        "uneven": "4 chunks along dim 0 of unequal size (2+2+1+0)",
        "grid": "2x2 (dim 0 in 2, dim 1 in 2)",
        # [Shard(0), Shard(0)] over a 2x2 mesh leaves the chunks Shard(0) over 4 ranks leaves
        "rows_twice": "4 chunks along dim 0",
        "replicated": "whole (one chunk)",
        "plain": "whole (one chunk)",
    }
    (note,) = [note for note in found.contents.notes if "shard file" in note]
    assert note.startswith("4 shard file(s) (__0_0.distcp, __1_0.distcp, __2_0.distcp, ...)")
    assert "saved by at least 4 rank(s) (ranks 0..3 wrote data)" in note
    assert "DCP does not record the placements or the mesh" in note
    text = found.describe()
    assert "sharded: 2x2 (dim 0 in 2, dim 1 in 2)" in text
    as_json = json.loads(json.dumps(found.to_json()))
    assert {t["path"]: t["split"] for t in as_json["tensors"]} == split


@pytest.mark.slow
def test_the_inert_reading_matches_dcp_s_own(saved_by_4_ranks: Path) -> None:
    """The chunks DCP's reader unpickles (a file this test wrote) give the same splits."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(saved_by_4_ranks)).read_metadata()
    entries = {
        fqn: entry
        for fqn, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }
    expected = {
        fqn: split_of(
            tuple(entry.size),
            [(tuple(chunk.offsets), tuple(chunk.sizes)) for chunk in entry.chunks],
        )
        for fqn, entry in entries.items()
    }
    chunks = {fqn: len(entry.chunks) for fqn, entry in entries.items()}
    assert chunks["grid"] == chunks["rows"] == dcp_ranks.RANKS
    found = {tensor.path: tensor.split for tensor in read_contents(saved_by_4_ranks).tensors}
    assert found == expected


@pytest.mark.parametrize(
    ("shape", "chunks", "split"),
    [
        ((4,), [((0,), (4,))], "whole (one chunk)"),
        ((4, 6), [((0, 0), (4, 3)), ((0, 3), (4, 3))], "2 chunks along dim 1"),
        (
            (4, 6),
            [((0, 0), (2, 2)), ((0, 2), (2, 4)), ((2, 0), (2, 2)), ((2, 2), (2, 4))],
            "2x2 (dim 0 in 2, dim 1 in 2 of unequal size (2+4))",
        ),
        # a gap: rows 2..3 are in no chunk (DCP's save refuses such a plan; hand-made metadata)
        (
            (4, 3),
            [((0, 0), (2, 3))],
            "1 chunk that does not tile the tensor (6 elements in the chunks, 12 in the tensor)",
        ),
        (
            (4, 3),
            [((0, 0), (2, 3)), ((1, 0), (3, 3))],
            "2 chunks that do not tile the tensor (15 elements in the chunks, 12 in the tensor)",
        ),
    ],
)
def test_split_of(
    shape: tuple[int, ...], chunks: list[tuple[tuple[int, ...], tuple[int, ...]]], split: str
) -> None:
    assert split_of(shape, chunks) == split
