"""The fault plan is a pure function of the seed (and the enabled kinds), printable and well-formed."""

from __future__ import annotations

import pytest

from offchain.operator.sim.plan import FAULT_KINDS, make_plan, parse_faults, parse_seeds


def test_same_seed_gives_the_same_plan() -> None:
    assert make_plan(17) == make_plan(17)
    assert make_plan(17).describe() == make_plan(17).describe()


def test_different_seeds_give_different_plans() -> None:
    plans = {make_plan(seed).describe() for seed in range(20)}
    assert len(plans) == 20


def test_enabled_kinds_bound_the_faults() -> None:
    for seed in range(30):
        plan = make_plan(seed, ("kill", "link"))
        assert {f.kind for f in plan.faults} <= {"kill", "link"}
        assert plan.faults, "every seed injects at least one fault"
        assert all(2 <= f.start <= f.end <= len(plan.steps) for f in plan.faults)
    assert make_plan(3, ()).faults == ()


def test_every_kind_is_reachable() -> None:
    seen = {f.kind for seed in range(200) for f in make_plan(seed).faults}
    assert seen == set(FAULT_KINDS)


def test_seed_and_fault_parsing() -> None:
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]
    assert parse_faults("kill,dup") == ("kill", "dup")
    assert parse_faults(None) == FAULT_KINDS
    with pytest.raises(ValueError, match="unknown fault kinds"):
        parse_faults("kill,meteor")
