"""The fault plan is a pure function of the seed (and the enabled kinds), printable and well-formed."""

from __future__ import annotations

import pytest

from offchain.operator.sim.plan import (
    CLIQUE_FAULT_KINDS,
    FAULT_KINDS,
    NETWORK_FAULT_KINDS,
    make_plan,
    node_list,
    parse_faults,
    parse_seeds,
    partition_groups,
)


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


# --- the Clique network's plans ----------------------------------------------------------------------------------
def test_anvil_seed_0_plan_is_unchanged_by_the_network_faults() -> None:
    """The anvil plans `make sim-deep` quotes stay what they were (a pinned plan: seed 0's faults)."""
    assert [str(f) for f in make_plan(0).faults] == [str(f) for f in make_plan(0, FAULT_KINDS, network="anvil").faults]
    assert make_plan(0).network == "anvil"
    assert all(f.kind in FAULT_KINDS for seed in range(100) for f in make_plan(seed).faults)


def test_clique_plans_are_pure_and_reach_every_clique_kind() -> None:
    assert make_plan(25, network="clique") == make_plan(25, network="clique")
    assert make_plan(25, network="clique").describe().startswith("seed 25 on clique:")
    seen = {f.kind for seed in range(200) for f in make_plan(seed, network="clique").faults}
    assert seen == set(CLIQUE_FAULT_KINDS)


def test_clique_plans_have_no_anvil_only_fault() -> None:
    for seed in range(200):
        for fault in make_plan(seed, network="clique").faults:
            assert fault.kind not in ("stall", "restart-node")
            assert fault.mode != "while_pending"
    with pytest.raises(ValueError, match="unknown fault kinds \\['stall'\\] on clique"):
        parse_faults("kill,stall", "clique")
    with pytest.raises(ValueError, match="unknown fault kinds \\['partition'\\] on anvil"):
        make_plan(1, ("partition",))
    assert parse_faults("stop-signer,partition", "clique") == ("stop-signer", "partition")


def test_network_faults_are_well_formed_and_never_overlap() -> None:
    stalls = 0
    for seed in range(200):
        network = [f for f in make_plan(seed, NETWORK_FAULT_KINDS, network="clique", steps=14).faults]
        assert network, "every seed injects at least one fault"
        for a in network:
            if a.kind == "stop-signer":
                nodes = node_list(a.target)
                assert len(nodes) in (1, 2) and set(nodes) <= {0, 1, 2, 3}
                assert (a.mode == "stall") == (len(nodes) == 2)
                stalls += len(nodes) == 2
            else:
                keep, lose = partition_groups(a.target, a.mode)
                assert sorted(keep + lose) == [0, 1, 2, 3] and len(keep) == 2
            for b in network:
                if a is not b:
                    assert a.end < b.start or b.end < a.start, (seed, str(a), str(b))
    assert stalls > 0
