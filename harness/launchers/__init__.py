"""Launchers: how a worker job becomes a process. One protocol (``protocol``), two
implementations (``spawn``: a fresh interpreter per job; ``zygote``: forked from one process that
has imported torch, the default), the GPU-lease wrapper (``leases``), and one way to stop jobs
(``shutdown``).

May import: ``core`` (the jobs they run and the zygote's messages).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from harness.core.errors import ConfigError
from harness.launchers.protocol import Launcher, LauncherBroken

__all__ = [
    "DEFAULT_LAUNCHER",
    "LAUNCHERS",
    "Launcher",
    "LauncherBroken",
    "make_launcher",
]

LAUNCHERS = ("zygote", "spawn")
DEFAULT_LAUNCHER = "zygote"


def make_launcher(
    name: str,
    workdir: Path,
    env: dict[str, str],
    *,
    preload_torchvision: bool = True,
    preload_distributed: bool = False,
    preload_modules: Sequence[str] = (),
) -> Launcher:
    """The launcher called ``name``; ``env`` is the zygote's own environment, which preloads
    torchvision and the distributed modules only where some job needs them, and the user's
    model modules ``preload_modules``."""
    if name == "spawn":
        from harness.launchers.spawn import SpawnLauncher

        return SpawnLauncher()
    if name == "zygote":
        from harness.launchers.zygote import ZygoteLauncher

        # one zygote per process: pytest-xdist workers each have their own
        log = workdir / "zygotes" / f"zygote-{os.getpid()}.log"
        return ZygoteLauncher(
            env=env,
            log_path=log,
            preload_torchvision=preload_torchvision,
            preload_distributed=preload_distributed,
            preload_modules=preload_modules,
        )
    raise ConfigError(f"unknown launcher {name!r}; expected one of {', '.join(LAUNCHERS)}")
