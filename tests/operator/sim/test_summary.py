"""The run summary (`var/sim/last-run.json`): faults per kind, the seeds run, and a `--jobs N` run's jobs merged
into one summary that counts every seed, fault and failure of every job once."""

from __future__ import annotations

from offchain.operator.sim.plan import FAULT_KINDS, make_plan, parse_seeds
from offchain.operator.sim.runner import fault_counts, merge_summaries, seed_ranges


def test_seed_ranges_is_the_seeds_syntax() -> None:
    assert seed_ranges([9, 1, 2, 3, 7, 10, 2]) == "1-3,7,9-10"
    assert parse_seeds(seed_ranges([9, 1, 2, 3, 7, 10])) == [1, 2, 3, 7, 9, 10]
    assert seed_ranges([]) == ""


def test_fault_counts_split_the_disk_fault_by_mode() -> None:
    plans = [make_plan(seed, FAULT_KINDS) for seed in range(1, 40)]
    counts = fault_counts(plans)
    assert sum(counts.values()) == sum(len(p.faults) for p in plans)
    assert "disk" not in counts and {"disk fill", "disk lock"} & set(counts)


def _job(seeds: str, failed: list[int], kinds: dict[str, int], broken: list[str]) -> dict:
    return {"network": "anvil", "db": "sqlite", "seeds": len(parse_seeds(seeds)) if seeds else 0, "seeds_run": seeds,
            "faults_injected": sum(kinds.values()), "faults_by_kind": kinds, "disk_fill": "tmpfs",
            "seeds_failed": failed, "invariants_broken": broken, "s_per_seed": 30.0}


def test_jobs_are_merged_once_each() -> None:
    merged = merge_summaries([_job("1,4,7", [4], {"kill": 2, "disk fill": 1}, ["nothing_left_open"]),
                              _job("2,5", [], {"kill": 1, "dup": 3}, []),
                              _job("", [], {}, [])], duration_s=90.0)  # a job that ran no seed
    assert merged["jobs"] == 3 and merged["seeds"] == 5 and merged["seeds_run"] == "1-2,4-5,7"
    assert (merged["first_seed"], merged["last_seed"]) == (1, 7)
    assert merged["faults_by_kind"] == {"disk fill": 1, "dup": 3, "kill": 3} and merged["faults_injected"] == 7
    assert merged["seeds_failed"] == [4] and merged["invariants_broken"] == ["nothing_left_open"]
    assert merged["s_per_seed"] == 18.0


def test_sim_ports_are_listening_ports_below_the_ephemeral_range() -> None:
    import socket

    from offchain.operator.sim import runner

    low = runner._ephemeral_low()
    ports = [runner.sim_port() for _ in range(50)]
    assert len(set(ports)) == 50  # never handed out twice
    if low > 12_000:
        assert all(10_000 <= port < low for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))  # free when handed out
