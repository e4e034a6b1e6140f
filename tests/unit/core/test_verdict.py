"""The verdict on synthetic reports: every way observed and expected can meet."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.devices import DeviceMap
from harness.core.jobs import JobRun
from harness.core.oracle import Expectation
from harness.core.outcomes import ErrorClass, Outcome
from harness.core.verdict import Judgement, compare_tensors, judge, probe_problems

CELL = Cell(
    model="trap",
    save_layout=Layout.DP,
    load_layout=Layout.SINGLE,
    format=Format.WEIGHTS,
    recipe="strip_prefix",
)
ORCHESTRATOR = 1
CLEAN = Expectation(error=None, reason="clean", tensor_device="cpu")
KEY = Expectation(error=ErrorClass.KEY_MISMATCH, reason="prefix", tensor_device="cpu")


def tensors(**digests: str) -> dict[str, Any]:
    return {
        name: {"digest": d, "dtype": "float32", "shape": [2], "device": "cpu"}
        for name, d in digests.items()
    }


def probe(pid: int) -> dict[str, Any]:
    return {"pid": pid, "cuda_visible_devices": "", "device_count": 0, "uuids": []}


SAVE = {
    "status": "saved",
    "sha256": "s",
    "tensors": tensors(a="1", b="2"),
    "output_digest": "out",
    "probe": probe(10),
}


def loaded(**changes: Any) -> dict[str, Any]:
    report = {
        "status": "loaded",
        "tensors": tensors(a="1", b="2"),
        "output_digest": "out",
        "probe": probe(20),
        "before": tensors(a="x", b="y"),
    }
    report.update(changes)
    return report


def raised(error_class: ErrorClass) -> dict[str, Any]:
    return {
        "status": "raised",
        "error_class": str(error_class),
        "exception_type": "builtins.RuntimeError",
        "message": "Error(s) in loading state_dict\n\tMissing key(s)",
        "probe": probe(20),
        "before": None,
    }


def run(
    report: dict[str, Any] | None, returncode: int | None = 0, timed_out: bool = False
) -> JobRun:
    return JobRun(
        name=CELL.id,
        returncode=returncode,
        timed_out=timed_out,
        duration_s=1.0,
        stderr_tail="boom",
        report=report,
    )


def verdict(
    expectation: Expectation, load: JobRun | None, save: dict[str, Any] | None = SAVE
) -> Judgement:
    return judge(
        CELL,
        expectation,
        save_report=save,
        save_failure="save crashed",
        load=load,
        orchestrator_pid=ORCHESTRATOR,
    )


def test_clean_load_passes() -> None:
    j = verdict(CLEAN, run(loaded()))
    assert j.outcome is Outcome.PASS
    assert j.observed is not None
    assert j.observed["output_equal"]
    assert j.observed["tensors"] == 2


def test_predicted_error_is_xfail_and_other_error_is_fail() -> None:
    assert verdict(KEY, run(raised(ErrorClass.KEY_MISMATCH))).outcome is Outcome.XFAIL
    wrong = verdict(KEY, run(raised(ErrorClass.UNSAFE_GLOBAL)))
    assert wrong.outcome is Outcome.FAIL
    assert "expected key_mismatch" in wrong.reason
    assert "observed unsafe_global" in wrong.reason


def test_unexpected_error_fails_and_unexpected_success_is_xpass() -> None:
    assert verdict(CLEAN, run(raised(ErrorClass.KEY_MISMATCH))).outcome is Outcome.FAIL
    assert verdict(KEY, run(loaded())).outcome is Outcome.XPASS


def test_silent_no_op_is_weights_differ() -> None:
    j = verdict(CLEAN, run(loaded(tensors=tensors(a="1", b="changed"))))
    assert j.outcome is Outcome.FAIL
    assert "weights_differ" in j.reason
    assert "['b']" in j.reason
    expected = Expectation(error=ErrorClass.WEIGHTS_DIFFER, reason="assign", tensor_device="cpu")
    assert (
        verdict(expected, run(loaded(tensors=tensors(a="1", b="changed")))).outcome is Outcome.XFAIL
    )


def test_output_and_device_and_tensor_set() -> None:
    assert "output_differs" in verdict(CLEAN, run(loaded(output_digest="other"))).reason
    moved = tensors(a="1", b="2")
    moved["b"]["device"] = "cuda:0"
    assert "device_mismatch" in verdict(CLEAN, run(loaded(tensors=moved))).reason
    assert "tensor_set_differs" in verdict(CLEAN, run(loaded(tensors=tensors(a="1")))).reason


def test_isolation_probe_mismatch_fails_the_cell() -> None:
    seen = loaded(probe={"pid": 20, "cuda_visible_devices": "0", "device_count": 1, "uuids": ["u"]})
    j = verdict(CLEAN, run(seen))
    assert j.outcome is Outcome.FAIL
    assert "isolation_mismatch" in j.reason
    assert "CUDA_VISIBLE_DEVICES='0', was given ''" in j.reason


def test_same_process_for_save_and_load_is_an_isolation_failure() -> None:
    j = verdict(CLEAN, run(loaded(probe=probe(10))))
    assert j.outcome is Outcome.FAIL
    assert "three distinct processes" in j.reason


def test_a_cell_where_no_entry_tells_a_load_from_none_is_an_error() -> None:
    j = verdict(CLEAN, run(loaded(before=tensors(a="1", b="2"))))
    assert j.outcome is Outcome.ERROR
    assert "could not tell a no-op load" in j.reason
    assert "every compared entry (['a', 'b'])" in j.reason


def test_an_entry_fixed_by_construction_is_named_but_the_others_decide() -> None:
    j = verdict(CLEAN, run(loaded(before=tensors(a="1", b="y"))))  # 'a' is a constant buffer
    assert j.outcome is Outcome.PASS
    assert (j.observed or {})["indistinct"] == ["a"]
    assert "1 of 2 entries equal the fresh model's before the load" in j.reason
    assert "['a']" in j.reason


def test_a_constant_entry_that_the_load_gets_wrong_still_fails_the_cell() -> None:
    wrong = loaded(before=tensors(a="1", b="y"), tensors=tensors(a="other", b="2"))
    j = verdict(CLEAN, run(wrong))
    assert j.outcome is Outcome.FAIL
    assert "weights_differ" in j.reason


@pytest.mark.parametrize(
    ("load", "words"),
    [
        (run(None, returncode=3), "exited with code 3"),
        (run(None, returncode=-11), "killed by SIGSEGV"),
        (run(None, returncode=-9, timed_out=True), "timed out after 1.0 s"),
        (
            run(
                {"status": "crashed", "exception_type": "ValueError", "message": "m"}, returncode=1
            ),
            "ValueError: m",
        ),
    ],
)
def test_crashed_load_is_an_error_naming_the_cell(load: JobRun, words: str) -> None:
    j = verdict(CLEAN, load)
    assert j.outcome is Outcome.ERROR
    assert j.reason.startswith(CELL.id)
    assert words in j.reason
    assert j.error is not None
    assert j.error["stderr_tail"] == "boom"
    assert j.error["phase"] == "load"


def test_failed_save_is_an_error_without_a_load() -> None:
    j = verdict(CLEAN, None, save=None)
    assert j.outcome is Outcome.ERROR
    assert j.error == {"phase": "save", "failure": "save crashed"}


def test_compare_tensors_reports_in_order_of_severity() -> None:
    saved = tensors(a="1")
    assert compare_tensors(saved, tensors(a="1"), device="cpu")[0] is None
    assert compare_tensors(saved, tensors(a="2"), device="cpu")[0] is ErrorClass.WEIGHTS_DIFFER
    assert compare_tensors(saved, tensors(a="1"), device="cuda:0")[0] is ErrorClass.DEVICE_MISMATCH


def test_probe_problems() -> None:
    assert probe_problems(probe(1), (), DeviceMap(), role="load") == []
    assert probe_problems(None, (), DeviceMap(), role="save") == [
        "the save worker reported no isolation probe"
    ]
    gpu = copy.deepcopy(probe(1))
    assert probe_problems(gpu, (0, 1), DeviceMap(), role="load") == [
        "load saw CUDA_VISIBLE_DEVICES='', was given '0,1'",
        "load saw 0 CUDA devices, was given 2",
    ]


def test_probe_checks_the_uuid_of_every_logical_device() -> None:
    devices = DeviceMap({0: "GPU-aaaa", 1: "GPU-bbbb"})
    right = {
        "pid": 5,
        "cuda_visible_devices": "GPU-bbbb,GPU-aaaa",
        "device_count": 2,
        "uuids": ["bbbb", "aaaa"],
    }
    assert probe_problems(right, (1, 0), devices, role="load") == []
    swapped = dict(right, uuids=["aaaa", "bbbb"])
    assert probe_problems(swapped, (1, 0), devices, role="load") == [
        "load's devices are ['aaaa', 'bbbb'], expected ['bbbb', 'aaaa']"
    ]


def test_outputs_of_different_device_types_are_not_compared() -> None:
    on_gpu = loaded(output_device="cuda:0", output_digest="other")
    j = verdict(CLEAN, run(on_gpu))
    assert j.outcome is Outcome.PASS
    assert j.observed is not None
    assert j.observed["output_equal"] is None
    assert "forward output not compared" in j.reason


def test_a_dataparallel_models_device_ids_are_observed() -> None:
    # the GPUs a whole DataParallel model's forward uses: the saver's, whatever the loader sees
    judged = verdict(CLEAN, run(loaded(dp_device_ids=[0, 1])))
    assert judged.outcome is Outcome.PASS
    assert judged.observed is not None
    assert judged.observed["dp_device_ids"] == [0, 1]
    plain = verdict(CLEAN, run(loaded()))
    assert plain.observed is not None
    assert "dp_device_ids" not in plain.observed


RESHARD = Cell(
    model="trap",
    save_layout=Layout.FSDP2,
    load_layout=Layout.FSDP2,
    format=Format.DCP,
    recipe="dcp_reshard",
    save_world=2,
    load_world=3,
)


def ranks(world: int, first_pid: int) -> list[dict[str, Any]]:
    return [probe(first_pid + r) | {"rank": r, "world_size": world} for r in range(world)]


def distributed_verdict(save_probes: Any, load_probes: Any) -> Judgement:
    save = SAVE | {"probe": probe(10), "rank_probes": save_probes}
    load = loaded(probe=probe(20), rank_probes=load_probes)
    return judge(
        RESHARD,
        CLEAN,
        save_report=save,
        save_failure=None,
        load=run(load),
        orchestrator_pid=ORCHESTRATOR,
    )


def test_every_rank_of_a_distributed_job_is_probed() -> None:
    assert distributed_verdict(ranks(2, 10), ranks(3, 20)).outcome is Outcome.PASS


@pytest.mark.parametrize(
    ("save_probes", "load_probes", "words"),
    [
        (ranks(2, 10), None, "the load job reported no probe of its ranks"),
        (ranks(2, 10), ranks(2, 20), "load ranks [0, 1] reported; expected 0..2"),
        (ranks(3, 10)[:2], ranks(3, 20), "save rank 0 saw a world of 3, expected 2"),
        (
            ranks(2, 10),
            [*ranks(3, 20)[:2], probe(20) | {"rank": 2, "world_size": 3}],
            "3 load ranks did not run in 3 distinct processes",
        ),
        (
            ranks(2, 10),
            [*ranks(3, 20)[:2], probe(22) | {"rank": 2, "world_size": 3, "device_count": 1}],
            "load rank 2 saw 1 CUDA devices, was given 0",
        ),
    ],
)
def test_a_rank_that_saw_the_wrong_world_fails_the_cell(
    save_probes: Any, load_probes: Any, words: str
) -> None:
    judgement = distributed_verdict(save_probes, load_probes)
    assert judgement.outcome is Outcome.FAIL
    assert "isolation_mismatch" in judgement.reason
    assert words in judgement.reason


def test_a_model_without_an_example_input_compares_tensors_but_no_output() -> None:
    judged = verdict(CLEAN, run(loaded(output_digest=None)), save=SAVE | {"output_digest": None})
    assert judged.outcome is Outcome.PASS
    assert judged.observed is not None
    assert judged.observed["output_equal"] is None
    assert "forward output not compared (the model gives no example_input)" in judged.reason
    differs = verdict(CLEAN, run(loaded(output_digest=None, tensors=tensors(a="1", b="9"))))
    assert differs.outcome is Outcome.FAIL


# A save that torch.save refused (a parametrized module pickled whole).
REFUSED = {
    "status": "raised",
    "error_class": "not_picklable",
    "exception_type": "builtins.RuntimeError",
    "message": "Serialization of parametrized modules is only supported through state_dict()",
    "probe": probe(10),
}
UNPICKLABLE = Expectation(error=ErrorClass.NOT_PICKLABLE, reason="r", tensor_device="cpu")


def test_a_save_that_raised_is_judged_as_the_observation() -> None:
    judged = verdict(UNPICKLABLE, None, save=REFUSED)
    assert judged.outcome is Outcome.XFAIL
    assert judged.observed is not None
    assert judged.observed["status"] == "save_raised"
    wrong = verdict(CLEAN, None, save=REFUSED)
    assert wrong.outcome is Outcome.FAIL
    assert "expected a clean load; observed not_picklable: the save raised" in wrong.reason


def test_a_non_persistent_buffer_is_compared_only_in_a_whole_model() -> None:
    saved = SAVE | {
        "tensors": tensors(a="1", b="2") | {"c": tensors(c="3")["c"] | {"persistent": False}}
    }
    fresh = tensors(c="9")["c"] | {"persistent": False}
    # a state_dict load: the buffer is not in the checkpoint, whatever its value
    plain = judge(
        CELL,
        CLEAN,
        save_report=saved,
        save_failure=None,
        load=run(loaded(tensors=tensors(a="1", b="2") | {"c": fresh})),
        orchestrator_pid=ORCHESTRATOR,
    )
    assert plain.outcome is Outcome.PASS
    whole = replace(CELL, format=Format.WHOLE, recipe="whole_module")
    unpickled = judge(
        whole,
        CLEAN,
        save_report=saved,
        save_failure=None,
        load=run(loaded(tensors=tensors(a="1", b="2") | {"c": fresh}, before=None)),
        orchestrator_pid=ORCHESTRATOR,
    )
    assert unpickled.outcome is Outcome.FAIL
    assert "1 of 3 tensors differ: ['c']" in unpickled.reason


def test_a_wrapped_cell_says_how_it_wrapped() -> None:
    from harness.core.axes import Wrapper

    compiled = replace(CELL, save_wrapper=Wrapper.COMPILE, recipe="strip_stacked_prefixes")
    judged = judge(
        compiled,
        CLEAN,
        save_report=SAVE,
        save_failure=None,
        load=run(loaded()),
        orchestrator_pid=ORCHESTRATOR,
    )
    assert judged.observed is not None
    assert judged.observed["wrappers"] == {"save": "torch.compile(model, backend='eager')"}
    plain = verdict(CLEAN, run(loaded()))
    assert plain.observed is not None
    assert "wrappers" not in plain.observed


def test_a_cell_that_compares_no_tensor_is_an_error() -> None:
    nothing = SAVE | {"tensors": {"c": tensors(c="3")["c"] | {"persistent": False}}}
    judged = verdict(CLEAN, run(loaded(tensors={}, before={})), save=nothing)
    assert judged.outcome is Outcome.ERROR
    assert "recorded no tensor this cell compares" in judged.reason


def test_a_save_that_raised_in_the_wrong_visibility_is_an_isolation_failure() -> None:
    seen_a_gpu = {"pid": 10, "cuda_visible_devices": "0", "device_count": 1, "uuids": ["u"]}
    judged = verdict(UNPICKLABLE, None, save=REFUSED | {"probe": seen_a_gpu})
    assert judged.outcome is Outcome.FAIL
    assert "isolation_mismatch" in judged.reason


@pytest.mark.parametrize(
    ("load_layout", "compared"),
    [
        (Layout.TP, "tensor parallel over 2 rank(s) at the save, 4 at the load"),
        (Layout.FSDP2_TP, ""),  # the same split: the outputs must be equal
    ],
)
def test_outputs_split_over_other_tensor_parallel_ranks_are_not_compared(
    load_layout: Layout, compared: str
) -> None:
    cell = replace(
        RESHARD,
        model="block",
        save_layout=Layout.FSDP2_TP,
        load_layout=load_layout,
        save_world=4,
        load_world=4,
    )
    save = SAVE | {"probe": probe(10), "rank_probes": ranks(4, 10)}
    load = loaded(probe=probe(20), rank_probes=ranks(4, 20), output_digest="summed otherwise")
    judgement = judge(
        cell, CLEAN, save_report=save, save_failure=None, load=run(load), orchestrator_pid=1
    )
    if compared:
        assert judgement.outcome is Outcome.PASS, judgement.reason
        assert f"forward output not compared ({compared}: the products" in judgement.reason
        assert judgement.observed is not None
        assert judgement.observed["output_equal"] is None
    else:
        assert judgement.outcome is Outcome.FAIL
        assert "output_differs" in judgement.reason


def test_a_tensor_loaded_in_another_dtype_is_a_dtype_change_before_its_bits() -> None:
    cast = loaded(
        tensors=tensors(a="1", b="2") | {"b": {**tensors(b="3")["b"], "dtype": "bfloat16"}}
    )
    judgement = verdict(CLEAN, run(cast))
    assert judgement.outcome is Outcome.FAIL
    assert "expected a clean load; observed dtype_changed: 1 of 2 tensors changed dtype" in (
        judgement.reason
    )
    assert "'b float32 -> bfloat16'" in judgement.reason
