"""The user's entry points: ``nox -s tests``, ``nox -s matrix``, ``nox -s lint``.

Each session installs the torch under certification first (default: the pins below; override with
``CKPT_MATRIX_TORCH="torch==X torchvision==Y"``), then this project, then its dependency group.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "lint"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
TORCH = os.environ.get("CKPT_MATRIX_TORCH", "torch==2.14.1 torchvision==0.29.1").split()


def install(session: nox.Session, *groups: str) -> None:
    session.install(*TORCH)
    session.install("-e", ".")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def tests(session: nox.Session) -> None:
    """The harness's unit tests and the conformance matrix as pytest tests (pytest-xdist)."""
    install(session, "test")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session
def matrix(session: nox.Session) -> None:
    """Run the conformance matrix on the hardware present; writes results.jsonl."""
    install(session)
    args = session.posargs or ["--out", "results.jsonl", "--overwrite"]
    session.run("ckpt-matrix", "run", *args)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy --strict over the harness, tests and this file."""
    install(session, "lint", "test")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
