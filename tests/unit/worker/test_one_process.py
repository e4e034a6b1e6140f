"""The worker's save and load jobs, run in this process against real files."""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.core.jobspec import LoadSpec, SaveSpec, spec_from_json
from harness.worker.entry import main
from harness.worker.models import build
from harness.worker.one_process import configure_torch, run_load, run_save
from harness.worker.one_process_recipes import PERFORM, LoadContext, stitched


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    configure_torch()
    yield
    torch.set_num_threads(threads)


def save(tmp_path: Path, layout: str, variant: str, model: str = "trap") -> dict[str, Any]:
    spec = SaveSpec(
        cell_key="k",
        model=model,
        layout=layout,
        variant=variant,
        artifact_path=str(tmp_path / f"{layout}-{variant}.pt"),
        report_path="unused",
    )
    return run_save(spec) | {"path": spec.artifact_path}


def load(saved: dict[str, Any], layout: str, recipe: str, model: str = "trap") -> dict[str, Any]:
    spec = LoadSpec(
        cell_id="c",
        model=model,
        layout=layout,
        recipe=recipe,
        artifact_path=saved["path"],
        artifact_sha256=saved["sha256"],
        report_path="unused",
    )
    return run_load(spec)


def test_strip_prefix_round_trip_is_bitwise(tmp_path: Path) -> None:
    saved = save(tmp_path, "dp", "state_dict")
    report = load(saved, "single", "strip_prefix")
    assert report["status"] == "loaded"
    assert report["tensors"] == saved["tensors"]
    assert report["output_digest"] == saved["output_digest"]
    assert all(
        report["before"][n]["digest"] != saved["tensors"][n]["digest"] for n in saved["tensors"]
    )


def test_assign_method_reports_loaded_weights_but_keeps_the_old_parameters(tmp_path: Path) -> None:
    saved = save(tmp_path, "single", "whole")
    spec = LoadSpec(
        cell_id="c",
        model="trap",
        layout="single",
        recipe="assign_method",
        artifact_path=saved["path"],
        artifact_sha256=saved["sha256"],
        report_path="unused",
    )
    model = PERFORM["assign_method"](LoadContext(spec))
    fresh = build("trap", seed=1)
    fresh_weight = dict(fresh.named_parameters())["head.weight"]
    reported = model.state_dict()["head.weight"]
    assert not torch.equal(reported, fresh_weight)  # state_dict() shows the saved weights
    real = dict(model.named_parameters())["head.weight"]
    assert torch.equal(real, fresh_weight)  # while the parameters never changed
    report = load(saved, "single", "assign_method")
    assert report["status"] == "loaded"
    assert report["tensors"] != saved["tensors"]


def test_a_flipped_byte_is_caught_before_unpickling(tmp_path: Path) -> None:
    saved = save(tmp_path, "single", "whole")
    path = Path(saved["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = load(saved, "single", "as_saved_whole")
    assert report["status"] == "raised"
    assert report["error_class"] == "checksum_mismatch"
    assert report["before"] is None


def test_default_whole_load_is_refused_by_weights_only(tmp_path: Path) -> None:
    report = load(save(tmp_path, "dp", "whole"), "dp", "whole_default_load")
    assert report["error_class"] == "unsafe_global"
    assert report["exception_type"] == "_pickle.UnpicklingError"


def test_module_state_dict_needs_a_wrapper(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="module_state_dict needs a DataParallel model"):
        save(tmp_path, "single", "module_state_dict")


def test_main_rejects_bad_arguments_and_specs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == 2
    assert "usage: python -m harness.worker" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"s\.json: unknown role 'fly'"):
        spec_from_json({"role": "fly"}, "s.json")
    with pytest.raises(ValueError, match=r"s\.json: malformed save spec"):
        spec_from_json({"role": "save", "model": "trap"}, "s.json")


def test_main_writes_a_crash_report_when_the_save_breaks(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "role": "save",
                "cell_key": "k",
                "model": "nope",
                "layout": "single",
                "variant": "state_dict",
                "artifact_path": str(tmp_path / "a.pt"),
                "report_path": str(report),
            }
        )
    )
    assert main([str(spec)]) == 1
    crashed = json.loads(report.read_text())
    assert crashed["status"] == "crashed"
    assert "cannot build model 'nope'" in crashed["message"]


def test_a_checkpoint_exception_is_described_rank_by_rank() -> None:
    from torch.distributed.checkpoint.api import CheckpointException

    from harness.worker.one_process import describe

    no_trace = traceback.StackSummary()
    exc = CheckpointException(
        "CheckpointException",
        {
            2: (RuntimeError("Missing key in checkpoint state_dict: k2."), no_trace),
            1: (RuntimeError("Missing key in checkpoint state_dict: k1."), no_trace),
        },
    )
    first, second, *_ = describe(exc).split("; ")
    assert first == "rank 1: RuntimeError: Missing key in checkpoint state_dict: k1."
    assert second.startswith("rank 2: RuntimeError: Missing key in checkpoint state_dict: k2.")
    assert describe(ValueError("plain")) == "plain"


def test_safetensors_save_model_keeps_the_ties(tmp_path: Path) -> None:
    saved = save(tmp_path, "single", "safetensors_model", model="tied")
    assert saved["status"] == "saved"
    assert saved["serialization"] == "safetensors"
    report = load(saved, "dp", "safetensors_model", model="tied")
    assert report["status"] == "loaded", report.get("message")
    assert report["tensors"] == saved["tensors"]


def test_safetensors_save_file_refuses_the_ties_at_the_save(tmp_path: Path) -> None:
    refused = save(tmp_path, "single", "safetensors_file", model="tied")
    assert refused["status"] == "raised"
    assert refused["error_class"] == "shared_tensors"
    assert not (tmp_path / "single-safetensors_file.pt").exists()
    assert list(tmp_path.glob(".*.tmp")) == []  # no torn file left behind


def test_a_save_that_fails_for_no_known_reason_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        save(tmp_path, "single", "state_dict")


def test_the_loader_names_what_broke_an_artifact_and_never_runs_a_payload(
    tmp_path: Path,
) -> None:
    """Each bad input put where the matrix's loader expects its artifact: the checksum refuses it
    before anything is unpickled, and the error says which defect the file now has."""
    from harness.worker.one_process import file_sha256
    from tests.unit.inspect import checkpoints

    marker = tmp_path / "payload-ran"
    seen = set()
    for name, (maker, kind) in checkpoints.bad_inputs(marker).items():
        saved = save(checkpoints.fresh(tmp_path, f"save-{name}"), "single", "state_dict")
        bad = maker(checkpoints.fresh(tmp_path, name))
        report = load(saved | {"path": str(bad)}, "single", "as_saved")
        assert report["status"] == "raised", name
        assert report["error_class"] == "checksum_mismatch", name
        assert "the file changed after its save" in report["message"], name
        if kind is not None:
            assert f": {kind}: " in report["message"], (name, report["message"])
        seen.add(report["message"].split("after its save", 1)[1])
    assert len(seen) == 11  # ten defects, and the two hostile pickles alike (intact files)
    # a hostile file whose checksum an attacker also replaced: weights_only=True refuses it
    hostile = checkpoints.hostile(marker)(checkpoints.fresh(tmp_path, "attacker"))
    saved = {"path": str(hostile), "sha256": file_sha256(hostile)}
    report = load(saved, "single", "as_saved")
    assert report["error_class"] == "unsafe_global"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("shape", "cut"),
    [
        ((16, 8), [(0, 2)]),  # FSDP2 over 2, or colwise over 2
        ((16, 8), [(1, 4)]),  # rowwise over 4
        ((16,), [(0, 3)]),  # 16 over 3: pieces of 6, 6 and 4, as torch.chunk cuts them
        ((3,), [(0, 4)]),  # fewer rows than ranks: the last piece is empty
        ((16, 8), [(0, 2), (1, 2)]),  # a 2 x 2 grid in row-major rank order
    ],
)
def test_local_pieces_in_rank_order_stitch_back_into_the_tensor(
    shape: tuple[int, ...], cut: list[tuple[int, int]]
) -> None:
    tensor = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    pieces = [tensor]
    for dim, parts in cut:
        pieces = [
            piece
            for whole in pieces
            for piece in (list(whole.chunk(parts, dim)) + [whole.narrow(dim, 0, 0)] * parts)[:parts]
        ]
    assert torch.equal(stitched(shape, pieces), tensor)
    # whole on every rank (a layer the plan leaves alone): rank 0's is taken
    assert torch.equal(stitched(shape, [tensor, tensor]), tensor)


def test_pieces_in_another_order_than_rank_order_stitch_rows_out_of_place() -> None:
    """A colwise layer on a [dp2, tp2] mesh: tp splits the rows first, dp splits each tp piece;
    rank (dp i, tp j) is rank 2i + j. Rank order is not row order: the stitch is wrong."""
    tensor = torch.arange(16.0).reshape(16, 1)
    by_rank = [tensor[8 * j + 4 * i : 8 * j + 4 * i + 4] for i in (0, 1) for j in (0, 1)]
    result = stitched((16, 1), by_rank)
    assert result.shape == tensor.shape
    assert not torch.equal(result, tensor)
    assert result[4:8].flatten().tolist() == [8.0, 9.0, 10.0, 11.0]


def test_too_few_pieces_for_the_grid_are_named() -> None:
    with pytest.raises(ValueError, match=r"4 pieces make a tensor of \(16,\), found 2"):
        stitched((16,), [torch.zeros(4), torch.zeros(4)])


def test_the_sharded_layout_keeps_a_tie_once_in_shards_of_about_a_third(tmp_path: Path) -> None:
    from safetensors import safe_open

    from harness.worker.one_process import save_sharded
    from harness.worker.one_process_recipes import INDEX

    model = build("tied", seed=0)
    save_sharded(model, tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / INDEX).read_text())
    files = sorted(p.name for p in (tmp_path / "saved").glob("*.safetensors"))
    assert files == sorted(set(index["weight_map"].values()))
    assert len(files) > 1  # a third of the model each, a large tensor alone
    held: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(tmp_path / "saved" / file), framework="pt") as opened:
            held |= {key: opened.get_tensor(key) for key in opened.keys()}  # noqa: SIM118
    state = model.state_dict()
    assert set(held) == set(index["weight_map"]) == set(state) - {"out.weight"}  # tied: once
    assert all(torch.equal(held[key], state[key]) for key in held)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in held.values()
    )
    save_sharded(model, tmp_path / "lost", lose_last=True)
    assert sorted(p.name for p in (tmp_path / "lost").glob("*.safetensors")) == files[:-1]


def test_a_stale_index_is_named_with_its_shard(tmp_path: Path) -> None:
    from harness.worker.one_process import save_sharded
    from harness.worker.one_process_recipes import INDEX

    save_sharded(build("trap", seed=0), tmp_path / "saved")
    index_path = tmp_path / "saved" / INDEX
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"][first] = next(s for s in shards if s != index["weight_map"][first])
    index_path.write_text(json.dumps(index))
    spec = LoadSpec(
        cell_id="c",
        model="trap",
        layout="single",
        recipe="safetensors_index",
        artifact_path=str(tmp_path / "saved"),
        artifact_sha256="",
        report_path=str(tmp_path / "load-report.json"),
    )
    with pytest.raises(ValueError, match=r"a stale index") as raised:
        PERFORM["safetensors_index"](LoadContext(spec))
    assert first in str(raised.value)


def test_a_checkpoint_exception_of_one_process_is_a_raised_load_not_a_crash(tmp_path: Path) -> None:
    """dcp.load(no_dist=True) raises CheckpointException, a BaseException (here: a folder whose
    .metadata is gone, as a torch that writes another metadata fails to read it)."""
    import warnings

    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    from harness.worker.one_process import artifact_sha256

    folder = tmp_path / "dcp"
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore")
        dcp_save(
            {"model": build("trap", seed=0).state_dict()}, checkpoint_id=str(folder), no_dist=True
        )
    (folder / ".metadata").unlink()
    spec = LoadSpec(
        cell_id="c",
        model="trap",
        layout="single",
        recipe="dcp_no_dist",
        artifact_path=str(folder),
        artifact_sha256=artifact_sha256(folder),
        report_path=str(tmp_path / "load-report.json"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = run_load(spec)
    assert report["status"] == "raised"
    assert report["exception_type"].endswith("CheckpointException")
