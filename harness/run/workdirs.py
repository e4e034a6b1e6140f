"""A run's work folder: its checkpoints, worker specs, reports, logs and leases.

A temporary folder is held by its run: ``owner`` names the host and pid and stays locked
(``flock``) while the run lives. The next run removes a folder of this host whose lock it can
take (its run was killed), and no other: not a live run's, not another host's on a shared
``TMPDIR``, not one this harness did not make. A folder given with ``--workdir`` is locked the
same way (two runs never share one), and what an earlier run created there (and only that, as
its marker lists it) is removed before a new run, so nothing of the old run is read as new.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from harness.core.errors import UserError

PREFIX = "ckpt-matrix-"
OWNER = "owner"  # in a temporary folder: "host pid", locked while the run lives
MARKER = ".ckpt-matrix-workdir"  # in a given folder: the run, and the names it created
OURS = ("artifacts", "cells", "leases", "zygotes", "environment", "golden")  # plus rerun-K


class WorkdirError(UserError):
    """A work folder that cannot be used; the message names it and the fix."""


def _lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def clean_stale(folder: Path | None = None) -> list[Path]:
    """Remove the temporary folders that killed runs of this host left behind: those whose
    owner file names this host and whose lock is free. Returns what was removed."""
    removed = []
    host = socket.gethostname()
    for stale in Path(folder or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        owner = stale / OWNER
        with contextlib.suppress(OSError, ValueError, IndexError):
            if not owner.is_file() or owner.read_text().split()[0] != host:
                continue
            with open(owner, encoding="utf-8") as handle:
                if not _lock(handle):
                    continue  # its run is alive
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def work_folder(
    given: Path | None, *, prefix: str = PREFIX, keep: tuple[str, ...] = ()
) -> Iterator[Path]:
    """The run's work folder, held for the run: a temporary one (removed at the end), or the
    given one (kept), with what an earlier run created there removed first, except the folders
    named in ``keep`` (``artifacts``: load the checkpoints an earlier run saved)."""
    clean_stale()
    if given is None:
        made = Path(tempfile.mkdtemp(prefix=prefix))
        with open(made / OWNER, "w+", encoding="utf-8") as owner:
            _lock(owner)
            owner.write(f"{socket.gethostname()} {os.getpid()}\n")
            owner.flush()
            try:
                yield made
            finally:
                shutil.rmtree(made, ignore_errors=True)
        return
    try:
        given.mkdir(parents=True, exist_ok=True)
        marker = open(given / MARKER, "a+", encoding="utf-8")  # noqa: SIM115 (held below)
    except OSError as exc:
        raise WorkdirError(
            f"--workdir {given}: cannot use it ({exc.strerror}); give a folder you can write"
        ) from None
    with marker:
        if not _lock(marker):
            marker.seek(0)
            raise WorkdirError(
                f"--workdir {given}: another run is using it ({marker.read().strip()[:200]}); "
                "give each run its own folder"
            )
        kept = _clear_earlier(given, marker, keep)
        # a kept folder stays the harness's: the next run that does not keep it removes it
        created = [name for name in OURS if name in kept or not (given / name).exists()]
        reruns = not any(given.glob("rerun-*"))
        marker.seek(0)
        marker.truncate()
        record = {"host": socket.gethostname(), "pid": os.getpid(), "created": created}
        marker.write(json.dumps({**record, "reruns": reruns}) + "\n")
        marker.flush()
        yield given


def _clear_earlier(given: Path, marker: IO[str], keep: tuple[str, ...] = ()) -> list[str]:
    """Remove what the earlier run's marker says it created, and nothing else; never what
    ``keep`` names. Returns what it kept of the earlier run's."""
    marker.seek(0)
    try:
        earlier = json.loads(marker.read() or "{}")
    except ValueError:
        return []
    if not isinstance(earlier, dict):
        return []
    made = [n for n in earlier.get("created") or [] if n in OURS]
    names = [n for n in made if n not in keep]
    if earlier.get("reruns"):
        names += [path.name for path in given.glob("rerun-*")]
    for name in names:
        if (given / name).exists():
            print(f"ckpt-matrix: removing {given / name} (an earlier run's)", file=sys.stderr)
            shutil.rmtree(given / name, ignore_errors=True)
    return [n for n in made if n in keep]
