"""Ctrl-C and SIGTERM during a run: they raise :class:`Interrupted` in the main thread, once, so
the run stops its workers, ends its results file with a line saying so, and ``--resume``
finishes it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Interrupted(BaseException):
    """The run was told to stop (SIGINT or SIGTERM): running workers are stopped, the results
    file ends with a line saying so, and ``--resume`` finishes the run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, once: a
    second signal is ignored while the first one's cleanup stops the workers. In another thread
    (a test's, a library caller's) it does nothing: only the main thread may set handlers."""

    def interrupt(signum: int, _frame: object) -> None:
        for name in (signal.SIGINT, signal.SIGTERM):
            signal.signal(name, signal.SIG_IGN)
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {name: signal.signal(name, interrupt) for name in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)
