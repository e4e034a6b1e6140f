"""Visibility subsets: which ordered sets of GPUs each save and load process is given.

A subset is an ordered tuple of GPU indices; order matters (``1,0`` makes physical GPU 1 the
process's ``cuda:0``). Policies choose the subsets from the GPUs the harness was given; a
scenario's ``visibility`` mode then pairs them into (save, load) visibilities. Pure functions.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from harness.core.cell import CPU, Visibility
from harness.core.errors import ConfigError

DEFAULT_ALL_SIZE = 3
MODES = ("cpu", "same", "cross")


@dataclass(frozen=True, kw_only=True)
class Policy:
    name: str  # minimal | pairs | all | sample
    size: int | None = None  # all:K (largest subset), sample:N (how many)

    def __str__(self) -> str:
        return self.name if self.size is None else f"{self.name}:{self.size}"


def parse_policy(text: str, where: str = "--visibility") -> Policy:
    name, _, arg = text.partition(":")
    if name in ("minimal", "pairs") and not arg:
        return Policy(name=name)
    if name in ("all", "sample"):
        if not arg and name == "all":
            return Policy(name=name, size=DEFAULT_ALL_SIZE)
        if arg.isdigit() and int(arg) > 0:
            return Policy(name=name, size=int(arg))
    raise ConfigError(
        f"{where} {text!r}: expected minimal, pairs, all, all:K or sample:N "
        "(K, N positive integers)"
    )


def subsets(
    policy: Policy, gpus: Sequence[int], *, single_only: Collection[int] = ()
) -> list[Visibility]:
    """The policy's subsets of ``gpus`` (in the order the harness was given them).
    GPUs in ``single_only`` (MIG instances: one per process) appear only alone."""
    n = len(gpus)
    chosen: list[Visibility]
    if policy.name == "minimal":
        chosen = [(g,) for g in gpus]
        for a, b in itertools.pairwise(gpus):
            chosen += [(a, b), (b, a)]
        if n > 2:
            chosen.append(tuple(gpus))
    elif policy.name == "pairs":
        chosen = [(g,) for g in gpus] + list(itertools.permutations(gpus, 2))
    elif policy.name == "all":
        largest = min(n, policy.size or DEFAULT_ALL_SIZE)
        chosen = [s for k in range(1, largest + 1) for s in itertools.permutations(gpus, k)]
    elif policy.name == "sample":
        every = [s for k in range(1, n + 1) for s in itertools.permutations(gpus, k)]
        rng = random.Random(f"ckpt-matrix sample {policy.size} of {tuple(gpus)}")
        picked = rng.sample(every, min(policy.size or 0, len(every)))
        chosen = sorted(picked, key=lambda s: (len(s), s))
    else:
        raise ValueError(f"unknown visibility policy {policy.name!r}")
    unique = list(dict.fromkeys(chosen))
    return [s for s in unique if len(s) == 1 or not set(s) & set(single_only)]


def pairs_for_mode(mode: str, chosen: Sequence[Visibility]) -> list[tuple[Visibility, Visibility]]:
    """(save, load) visibilities for a scenario's mode; without GPUs every mode is (cpu, cpu).

    - ``cpu``: always the CPU fallback;
    - ``same``: save and load under the same subset;
    - ``cross``: each save subset with the load subsets that cover the oracle's classes (see
      ``cross_loads``), rather than the full product, which grows as the square of the subsets.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown visibility mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "cpu" or not chosen:
        return [(CPU, CPU)]
    if mode == "same":
        return [(s, s) for s in chosen]
    return [(s, load) for s in chosen for load in cross_loads(s, chosen)]


def cross_loads(save: Visibility, chosen: Sequence[Visibility]) -> list[Visibility]:
    """Load subsets for one save subset: the same one (storages return to their own GPUs), its
    reverse (same GPUs, other logical order), a different single GPU (same logical cuda:0, other
    physical GPU), the largest subset (more GPUs), and none (CUDA unavailable)."""
    candidates = [save, tuple(reversed(save))]
    other = next((s for s in chosen if len(s) == 1 and s != save[:1]), None)
    if other is not None:
        candidates.append(other)
    candidates.append(max(chosen, key=len))
    candidates.append(CPU)
    return list(dict.fromkeys(candidates))
