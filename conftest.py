# Kept free of torch: every pytest process (and every xdist worker) would pay ~3 s to import it.
from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Hypothesis profiles must exist before hypothesis's own pytest_configure reads
    # --hypothesis-profile. "ci" (the default) is derandomized: the same examples on every run,
    # so CI is stable; "thorough" is for longer local runs (`nox -s tests -- --hypothesis-profile
    # thorough`).
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci",
        max_examples=60,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    settings.register_profile(
        "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The order pytest-xdist's workers take the tests in (--dist worksteal: a worker that runs
    # out takes the last half of another's queue): the tests that run worker processes for
    # seconds each first, then the conformance matrix's cells (a second or less each), then the
    # quick ones, each in its own order; so the run ends on short tests on every worker, and
    # none waits for another's long one.
    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("slow") is None:
            return 2
        return 1 if "ckpt_cell" in getattr(item, "fixturenames", ()) else 0

    items.sort(key=order)
