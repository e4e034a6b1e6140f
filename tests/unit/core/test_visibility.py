from __future__ import annotations

import pytest

from harness.core.visibility import Policy, pairs_for_mode, parse_policy, subsets


def test_minimal_is_each_alone_each_adjacent_pair_both_ways_and_all() -> None:
    assert subsets(parse_policy("minimal"), [0, 1, 2, 3]) == [
        (0,),
        (1,),
        (2,),
        (3,),
        (0, 1),
        (1, 0),
        (1, 2),
        (2, 1),
        (2, 3),
        (3, 2),
        (0, 1, 2, 3),
    ]
    assert subsets(parse_policy("minimal"), [0, 1]) == [(0,), (1,), (0, 1), (1, 0)]
    assert subsets(parse_policy("minimal"), []) == []


def test_minimal_follows_the_order_the_gpus_were_given() -> None:
    assert subsets(parse_policy("minimal"), [3, 2]) == [(3,), (2,), (3, 2), (2, 3)]


def test_pairs_and_all() -> None:
    assert len(subsets(parse_policy("pairs"), [0, 1, 2])) == 3 + 6
    assert len(subsets(parse_policy("all:2"), [0, 1, 2])) == 3 + 6
    assert len(subsets(parse_policy("all"), [0, 1, 2, 3])) == 4 + 12 + 24


def test_sample_is_seeded_and_stable() -> None:
    first = subsets(parse_policy("sample:5"), [0, 1, 2, 3])
    assert first == subsets(parse_policy("sample:5"), [0, 1, 2, 3])
    assert len(first) == 5
    assert len(set(first)) == 5
    assert len(subsets(parse_policy("sample:999"), [0, 1])) == 4


def test_mig_devices_appear_only_alone() -> None:
    assert subsets(parse_policy("minimal"), [0, 1], single_only={1}) == [(0,), (1,)]


@pytest.mark.parametrize("text", ["", "max", "sample", "sample:0", "all:x", "pairs:2"])
def test_bad_policies_are_named(text: str) -> None:
    with pytest.raises(ValueError, match=f"--visibility '{text}': expected minimal"):
        parse_policy(text)


def test_policy_str() -> None:
    assert str(Policy(name="sample", size=8)) == "sample:8"
    assert str(parse_policy("all")) == "all:3"


def test_modes() -> None:
    chosen = [(0,), (1,), (0, 1), (1, 0)]
    assert pairs_for_mode("cpu", chosen) == [((), ())]
    assert pairs_for_mode("same", []) == [((), ())]
    assert pairs_for_mode("same", chosen) == [(s, s) for s in chosen]
    cross = pairs_for_mode("cross", chosen)
    assert ((0,), (0,)) in cross
    assert ((0, 1), (1, 0)) in cross
    assert ((0,), ()) in cross
    assert ((0,), (1,)) in cross
    assert ((0,), (0, 1)) in cross
    assert len(cross) == len(set(cross)) < len(chosen) * (len(chosen) + 1)
    with pytest.raises(ValueError, match="unknown visibility mode 'both'"):
        pairs_for_mode("both", chosen)
