"""The verdict: compare what a cell's load observed with what the oracle expected.

Pure: it reads the saver's record, the loader's report and the expectation, and returns the
outcome with its reason and an ``observed`` summary for the results file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.core.axes import Wrapper, tensor_parallel_ranks
from harness.core.cell import Cell, Visibility
from harness.core.devices import DeviceMap, normalise_uuid
from harness.core.jobs import JobRun
from harness.core.jobspec import OPTIMIZER_PREFIX
from harness.core.oracle import Expectation
from harness.core.outcomes import ErrorClass, Outcome

NAMES_SHOWN = 8
# What each wrapper was, as called (torch.compile's eager backend needs no C++ toolchain).
WRAPPER_CALLS = {
    Wrapper.COMPILE: "torch.compile(model, backend='eager')",
    Wrapper.CHECKPOINT: "checkpoint_wrapper(model)",
}


@dataclass(frozen=True, kw_only=True)
class Judgement:
    outcome: Outcome
    reason: str
    observed: dict[str, Any] | None
    error: dict[str, Any] | None = None


def probe_problems(
    probe: dict[str, Any] | None, visibility: Visibility, devices: DeviceMap, *, role: str
) -> list[str]:
    """How a worker's view of its devices differs from the visibility it was given: the
    CUDA_VISIBLE_DEVICES it saw, its device count, and the UUID of each logical device."""
    if not probe:
        return [f"the {role} worker reported no isolation probe"]
    problems = []
    wanted = devices.env_value(visibility)
    if probe.get("cuda_visible_devices") != wanted:
        seen = probe.get("cuda_visible_devices")
        problems.append(f"{role} saw CUDA_VISIBLE_DEVICES={seen!r}, was given {wanted!r}")
    if probe.get("device_count") != len(visibility):
        seen = probe.get("device_count")
        problems.append(f"{role} saw {seen} CUDA devices, was given {len(visibility)}")
    expected = devices.expected_uuids(visibility)
    seen_uuids = tuple(normalise_uuid(u) for u in probe.get("uuids", []))
    if visibility and expected is not None and seen_uuids != expected:
        problems.append(f"{role}'s devices are {list(seen_uuids)}, expected {list(expected)}")
    return problems


def rank_problems(
    probes: list[dict[str, Any]] | None,
    world: int,
    visibility: Visibility,
    devices: DeviceMap,
    *,
    role: str,
) -> list[str]:
    """How the ranks of a distributed job differ from what it was given: one probe per rank
    0..world-1, each seeing ``world`` ranks and the visibility it was given, in its own process."""
    if not probes:
        return [f"the {role} job reported no probe of its ranks"]
    ranks = [probe.get("rank") for probe in probes]
    if ranks != list(range(world)):
        return [f"{role} ranks {ranks} reported; expected 0..{world - 1}"]
    problems = [
        f"{role} rank {probe['rank']} saw a world of {probe.get('world_size')}, expected {world}"
        for probe in probes
        if probe.get("world_size") != world
    ]
    if len({probe.get("pid") for probe in probes}) != world:
        problems.append(f"the {world} {role} ranks did not run in {world} distinct processes")
    for probe in probes:
        problems += probe_problems(probe, visibility, devices, role=f"{role} rank {probe['rank']}")
    return problems


def compare_tensors(
    saved: dict[str, Any], loaded: dict[str, Any], *, device: str
) -> tuple[ErrorClass | None, str]:
    """The first way the loaded tensors differ from the saved ones, in order of severity."""
    missing = sorted(saved.keys() - loaded.keys())
    extra = sorted(loaded.keys() - saved.keys())
    if missing or extra:
        return (
            ErrorClass.TENSOR_SET_DIFFERS,
            f"missing {missing[:NAMES_SHOWN]}, extra {extra[:NAMES_SHOWN]}",
        )
    retyped = sorted(name for name in saved if saved[name]["dtype"] != loaded[name]["dtype"])
    if retyped:
        casts = [f"{name} {saved[name]['dtype']} -> {loaded[name]['dtype']}" for name in retyped]
        return (
            ErrorClass.DTYPE_CHANGED,
            f"{len(retyped)} of {len(saved)} tensors changed dtype: {casts[:NAMES_SHOWN]}",
        )
    differ = sorted(name for name in saved if saved[name]["digest"] != loaded[name]["digest"])
    if differ:
        return (
            ErrorClass.WEIGHTS_DIFFER,
            f"{len(differ)} of {len(saved)} tensors differ: {differ[:NAMES_SHOWN]}",
        )
    misplaced = sorted(name for name in loaded if loaded[name]["device"] != device)
    if misplaced:
        where = sorted({loaded[name]["device"] for name in misplaced})
        return (
            ErrorClass.DEVICE_MISMATCH,
            f"{len(misplaced)} tensors on {where}, expected {device}: {misplaced[:NAMES_SHOWN]}",
        )
    return None, f"{len(saved)} tensors bitwise equal on {device}"


def compared(cell: Cell, tensors: dict[str, Any]) -> dict[str, Any]:
    """The entries a cell compares: optimizer state where its recipe restores it, and a
    non-persistent buffer only where the recipe ends with the unpickled model itself (the
    state_dict leaves such buffers out)."""
    recipe = cell.recipe_spec
    return {
        name: tensor
        for name, tensor in tensors.items()
        if (recipe.restores_optimizer or not name.startswith(OPTIMIZER_PREFIX))
        and (recipe.keeps_loaded_model or tensor.get("persistent", True))
    }


def judge_raised_save(
    expectation: Expectation, save_report: dict[str, Any], isolation: list[str]
) -> Judgement:
    """The save itself raised (e.g. torch.save refusing to pickle a parametrized module): an
    observation, judged like a load that raised; no load runs. A saver that did not see exactly
    its devices is an isolation failure first, as for every cell."""
    observed_class = ErrorClass(save_report["error_class"])
    detail = f"the save raised {save_report['exception_type']}: {_one_line(save_report['message'])}"
    if isolation:
        observed_class, detail = ErrorClass.ISOLATION_MISMATCH, "; ".join(isolation)
    observed: dict[str, Any] = {
        "status": "save_raised",
        "probe": save_report.get("probe"),
        "saved_with_torch": save_report.get("torch"),
        "error_class": str(observed_class),
        "exception_type": save_report["exception_type"],
        "message": save_report["message"],
        "detail": detail,
    }
    expected_class = expectation.error
    if expected_class is observed_class:
        return Judgement(outcome=Outcome.XFAIL, reason=expectation.reason, observed=observed)
    wanted = "a clean load" if expected_class is None else f"{expected_class}"
    return Judgement(
        outcome=Outcome.FAIL,
        reason=f"expected {wanted}; observed {observed_class}: {detail}",
        observed=observed,
    )


def _crash(phase: str, failure: str, run: JobRun | None) -> Judgement:
    error: dict[str, Any] = {"phase": phase, "failure": failure}
    if run is not None:
        error.update(
            returncode=run.returncode,
            signal=run.signal_name,
            timed_out=run.timed_out,
            stderr_tail=run.stderr_tail,
        )
    return Judgement(
        outcome=Outcome.ERROR, reason=failure.splitlines()[0], observed=None, error=error
    )


def judge(
    cell: Cell,
    expectation: Expectation,
    *,
    save_report: dict[str, Any] | None,
    save_failure: str | None,
    load: JobRun | None,
    orchestrator_pid: int,
    devices: DeviceMap | None = None,
) -> Judgement:
    """``load`` is None when no load ran because the save failed, or raised."""
    if save_report is not None and save_report.get("status") == "raised":
        devices = devices or DeviceMap()
        isolation = probe_problems(
            save_report.get("probe"), cell.save_visibility, devices, role="save"
        )
        return judge_raised_save(expectation, save_report, isolation)
    if save_report is None or load is None:
        return _crash("save", save_failure or f"{cell.save_key.id}: save failed", None)
    report = load.report
    if not load.ok or report is None or report.get("status") not in ("loaded", "raised"):
        return _crash("load", load.failure(), load)

    observed: dict[str, Any] = {
        "status": report["status"],
        "probe": report.get("probe"),
        "saved_with_torch": save_report.get("torch"),
        "loaded_with_torch": report.get("torch"),
    }
    if "dp_device_ids" in report:
        observed["dp_device_ids"] = report["dp_device_ids"]
    wrappers = {
        role: WRAPPER_CALLS[wrapper]
        for role, wrapper in (("save", cell.save_wrapper), ("load", cell.load_wrapper))
        if wrapper is not Wrapper.NONE
    }
    if wrappers:  # how the cell wrapped its models: torch.compile's backend, for one
        observed["wrappers"] = wrappers
    devices = devices or DeviceMap()
    isolation = probe_problems(save_report.get("probe"), cell.save_visibility, devices, role="save")
    isolation += probe_problems(report.get("probe"), cell.load_visibility, devices, role="load")
    for role, layout, world, visibility, job_report in (
        ("save", cell.save_layout, cell.save_world, cell.save_visibility, save_report),
        ("load", cell.load_layout, cell.load_world, cell.load_visibility, report),
    ):
        if layout.distributed:
            probes = job_report.get("rank_probes")
            isolation += rank_problems(probes, world, visibility, devices, role=role)
    pids = {orchestrator_pid, save_report["probe"]["pid"], report["probe"]["pid"]}
    if len(pids) != 3:
        isolation.append("save, load and orchestrator did not run in three distinct processes")

    before = report.get("before")
    saved_tensors = compared(cell, save_report["tensors"])
    if not saved_tensors:
        return Judgement(
            outcome=Outcome.ERROR,
            reason="the saver recorded no tensor this cell compares; it could not tell a correct "
            "load from any other",
            observed=observed,
            error={"phase": "setup", "failure": "nothing to compare"},
        )
    indistinct: list[str] = []
    if before is not None:
        # entries a model's construction fixes (a constant buffer) equal the saved ones before
        # any load: compared all the same, but only the others tell a load from none
        indistinct = sorted(
            n
            for n in saved_tensors
            if before.get(n, {}).get("digest") == saved_tensors[n]["digest"]
        )
        if len(indistinct) == len(saved_tensors):
            return Judgement(
                outcome=Outcome.ERROR,
                reason="the loader's fresh model already equals the saved one in every compared "
                f"entry ({indistinct[:NAMES_SHOWN]}); this cell could not tell a no-op load "
                "from a real one",
                observed=observed,
                error={"phase": "setup", "failure": "insensitive cell"},
            )
        if indistinct:
            observed["indistinct"] = indistinct

    observed_class: ErrorClass | None
    if isolation:
        observed_class, detail = ErrorClass.ISOLATION_MISMATCH, "; ".join(isolation)
    elif report["status"] == "raised":
        observed_class = ErrorClass(report["error_class"])
        detail = f"{report['exception_type']}: {_one_line(report['message'])}"
        observed.update(
            error_class=str(observed_class),
            exception_type=report["exception_type"],
            message=report["message"],
        )
    else:
        loaded = compared(cell, report["tensors"])
        observed_class, detail = compare_tensors(
            saved_tensors, loaded, device=expectation.tensor_device
        )
        output_equal = outputs_agree(cell, save_report, report)
        if observed_class is None and output_equal is False:
            observed_class, detail = ErrorClass.OUTPUT_DIFFERS, "forward output differs"
        elif output_equal is None:
            detail += f"; forward output not compared ({not_compared(cell, save_report, report)})"
        observed.update(
            tensors=len(loaded),
            devices=sorted({t["device"] for t in loaded.values()}),
            output_equal=output_equal,
        )
        if observed_class is not None:
            observed["error_class"] = str(observed_class)
    if indistinct:
        detail += (
            f"; {len(indistinct)} of {len(saved_tensors)} entries equal the fresh model's before "
            f"the load and cannot tell it from none: {indistinct[:NAMES_SHOWN]}"
        )
    observed["detail"] = detail

    expected_class = expectation.error
    if expected_class is None and observed_class is None:
        return Judgement(outcome=Outcome.PASS, reason=detail, observed=observed)
    if expected_class is None:
        return Judgement(
            outcome=Outcome.FAIL,
            reason=f"expected a clean load; observed {observed_class}: {detail}",
            observed=observed,
        )
    if observed_class is None:
        return Judgement(
            outcome=Outcome.XPASS,
            reason=f"expected {expected_class} ({expectation.reason}); the load succeeded",
            observed=observed,
        )
    if observed_class is expected_class:
        return Judgement(outcome=Outcome.XFAIL, reason=expectation.reason, observed=observed)
    return Judgement(
        outcome=Outcome.FAIL,
        reason=f"expected {expected_class} ({expectation.reason}); observed {observed_class}: "
        f"{detail}",
        observed=observed,
    )


def outputs_agree(
    cell: Cell, save_report: dict[str, Any], load_report: dict[str, Any]
) -> bool | None:
    """Whether the forward outputs are bitwise equal; None where they are not comparable: run on
    different device types, under different torch versions (kernels may change between
    releases), or split across another number of tensor-parallel ranks (each rank sums its own
    part of a row-split product, then the parts are summed: another split rounds otherwise).
    The tensors themselves must still be bitwise equal."""
    return (
        None
        if not_compared(cell, save_report, load_report)
        else bool(load_report["output_digest"] == save_report["output_digest"])
    )


def not_compared(cell: Cell, save_report: dict[str, Any], load_report: dict[str, Any]) -> str:
    """Why :func:`outputs_agree` compares nothing, or an empty string where it compares."""
    if save_report.get("output_digest") is None or load_report.get("output_digest") is None:
        return "the model gives no example_input"
    saved_on = str(save_report.get("output_device", "cpu")).split(":")[0]
    loaded_on = str(load_report.get("output_device", "cpu")).split(":")[0]
    if saved_on != loaded_on or save_report.get("torch") != load_report.get("torch"):
        return "other device type or torch version"
    saved_split = tensor_parallel_ranks(cell.save_layout, cell.save_world)
    loaded_split = tensor_parallel_ranks(cell.load_layout, cell.load_world)
    if saved_split != loaded_split:
        return (
            f"tensor parallel over {saved_split} rank(s) at the save, {loaded_split} at the "
            "load: the products are summed in other parts"
        )
    return ""


def _one_line(message: str, limit: int = 300) -> str:
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."
