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
