"""A handful of fault-simulation seeds against the real processes (the CI slice of `make sim-deep`).

Each seed (24 steps, every fault kind: the plans `make sim-deep` starts with) starts its own anvil, CC, SP and
bank, drives the seed's workload through the fault proxy with the seed's faults, heals, waits for quiescence and
runs the independent checker and `clearhouse reconcile`.
`CLEARHOUSE_SIM_SEEDS` picks other seeds (e.g. a failing one from `make sim-deep`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from offchain.operator.sim.plan import FAULT_KINDS, make_plan, parse_seeds
from offchain.operator.sim.runner import run_seed

SEEDS = parse_seeds(os.environ.get("CLEARHOUSE_SIM_SEEDS", "1-3"))


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_breaks_no_invariant(seed: int, tmp_path: Path) -> None:
    plan = make_plan(seed, FAULT_KINDS)
    result = run_seed(plan, tmp_path / f"seed-{seed}", quiesce_s=90.0, keep=True)
    assert result.faults >= 1
    assert result.violations == [], "\n".join(str(v) for v in result.violations) + "\n" + plan.describe()
