"""A distributed job across two nodes: two torchrun agents on the loopback, joined by torchrun's
c10d rendezvous (``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint HOST:PORT``), run one save job
of an fsdp2 cell at world size 2; the checkpoint they write loads at 3 ranks on one node and
the cell PASSes. docs/certify.md shows the same on two machines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.jobs import Job, JobRun
from harness.core.jobspec import rank_path, read_report
from harness.core.oracle import expect
from harness.core.outcomes import Outcome
from harness.core.verdict import judge
from harness.launchers.protocol import WORKER_MODULE, free_port, worker_args
from harness.run.artifacts import ArtifactStore
from harness.run.jobs import JobFactory
from harness.run.runner import CellRunner

CELL = Cell(
    model="trap",
    save_layout=Layout.FSDP2,
    load_layout=Layout.FSDP2,
    format=Format.DCP,
    recipe="dcp_reshard",
    save_world=2,
    load_world=3,
)


def agent(job: Job, node: int, port: int, log: Path) -> subprocess.Popen[bytes]:
    args = worker_args(job.argv)
    assert args is not None
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "ckpt-matrix-two-nodes",
        "--rdzv-conf",
        f"is_host={int(node == 0)}",
        *WORKER_MODULE,
        *args,
    ]
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, env=dict(job.env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


class TwoNodes:
    """A launcher that runs a save job of 2 ranks as two torchrun agents, one rank each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def launch(self, job: Job) -> JobRun:
        assert job.ranks == 2
        port = free_port()
        logs = [self.folder / f"node{node}.log" for node in (0, 1)]
        agents = [agent(job, node, port, logs[node]) for node in (0, 1)]
        try:
            codes = [a.wait(timeout=180) for a in agents]
        finally:
            for a in agents:
                if a.poll() is None:
                    os.killpg(a.pid, 9)
                    a.wait()
        tails = "\n".join(log.read_text(errors="replace")[-2000:] for log in logs)
        assert codes == [0, 0], tails
        return JobRun(
            name=job.name,
            returncode=0,
            timed_out=False,
            duration_s=0.0,
            stderr_tail=tails,
            report=read_report(job.report_path),
        )

    def stop_all(self) -> None:
        pass


@pytest.mark.slow
def test_two_torchrun_agents_on_the_loopback_save_a_checkpoint_that_loads(
    tmp_path: Path, ckpt_runner: CellRunner
) -> None:
    factory = JobFactory(workdir=tmp_path / "work")
    artifact = ArtifactStore(factory, TwoNodes(tmp_path)).get(CELL.save_key)
    assert artifact.ok, artifact.failure
    assert artifact.report is not None
    assert artifact.report["world"] == 2
    save_job = factory.save_job(CELL.save_key)
    rank1 = read_report(rank_path(save_job.report_path, 1))
    assert rank1 is not None  # the second node's rank reported too
    assert rank1["probe"]["pid"] != artifact.report["probe"]["pid"]
    # the 3 ranks on one node: forked by the matrix's zygote, which this session has started
    load = ckpt_runner.launcher.launch(
        factory.load_job(CELL, artifact_path=artifact.path, sha256=artifact.report["sha256"])
    )
    judgement = judge(
        CELL,
        expect(CELL, torch_version=(2, 14)),
        save_report=artifact.report,
        save_failure=None,
        load=load,
        orchestrator_pid=os.getpid(),
    )
    assert judgement.outcome is Outcome.PASS, (judgement.reason, load.stderr_tail)
