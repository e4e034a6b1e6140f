from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.core.axes import Layout, SaveVariant
from harness.core.cell import SaveKey
from harness.core.jobs import Job, JobRun
from harness.run.artifacts import ArtifactStore
from harness.run.jobs import JobFactory
from tests.unit.fake_launcher import RecordingLauncher, crash, report

KEY = SaveKey(model="trap", layout=Layout.DP, variant=SaveVariant.STATE_DICT)


def test_saves_once_for_many_concurrent_cells(tmp_path: Path) -> None:
    launcher = RecordingLauncher()
    store = ArtifactStore(JobFactory(workdir=tmp_path), launcher)
    with ThreadPoolExecutor(max_workers=4) as pool:
        artifacts = list(pool.map(lambda _: store.get(KEY), range(8)))
    assert launcher.names() == [KEY.id]
    assert all(a.ok and a.report is not None and a.report["sha256"] == "abc" for a in artifacts)
    assert artifacts[0].path.endswith(f"{KEY.id}/checkpoint.pt")


def test_a_second_store_on_the_same_folder_reuses_the_record(tmp_path: Path) -> None:
    first, second = RecordingLauncher(), RecordingLauncher()
    ArtifactStore(JobFactory(workdir=tmp_path), first).get(KEY)
    again = ArtifactStore(JobFactory(workdir=tmp_path), second).get(KEY)
    assert again.ok
    assert second.jobs == []


def test_a_failed_save_is_recorded_once_with_its_reason(tmp_path: Path) -> None:
    launcher = RecordingLauncher(behaviours={KEY.id: crash})
    store = ArtifactStore(JobFactory(workdir=tmp_path), launcher)
    first, second = store.get(KEY), store.get(KEY)
    assert not first.ok
    assert first == second
    assert launcher.names() == [KEY.id]
    assert first.failure is not None
    assert "killed by SIGSEGV" in first.failure
    assert "Segmentation fault" in first.failure


def test_a_save_the_launcher_lost_is_not_recorded_and_runs_again(tmp_path: Path) -> None:
    def lost_once(job: Job, data: dict[str, Any]) -> JobRun:
        if len(launcher.jobs) == 1:
            return replace(crash(job, data), lost="the zygote exited with code -9")
        return report(job, data)

    launcher = RecordingLauncher(behaviours={KEY.id: lost_once})
    store = ArtifactStore(JobFactory(workdir=tmp_path), launcher)
    first = store.get(KEY)
    assert not first.ok
    assert first.failure is not None
    assert "the launcher lost the job: the zygote exited with code -9" in first.failure
    second = store.get(KEY)
    assert second.ok
    assert launcher.names() == [KEY.id, KEY.id]
