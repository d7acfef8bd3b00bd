"""The simulator's plan: the workload steps and the faults injected between them, a pure function of the seed.

`make_plan(seed, faults)` never reads the clock, the machine or the environment, so a seed replays exactly the
same steps and faults (what the services then do in between is theirs). Faults are placed at step boundaries,
never at wall-clock instants; every fault opened in a plan is closed again before the plan's heal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FAULT_KINDS = ("kill", "pause", "stall", "restart-node", "link", "disk", "dup")  # anvil, the default network
# On the four-signer Clique network (`--network clique`): stop signer nodes (one, or two of four: the chain stalls
# for the window) and split the network two against two. anvil's own faults (evm_setAutomine, anvil --state
# restart, a CC kill `while_pending`) do not exist there.
NETWORK_FAULT_KINDS = ("stop-signer", "partition")
CLIQUE_FAULT_KINDS = ("kill", "pause", "link", "disk", "dup", *NETWORK_FAULT_KINDS)
NETWORKS = {"anvil": FAULT_KINDS, "clique": CLIQUE_FAULT_KINDS}
SIGNER_NODES = 4
SERVICES = ("cc", "sp", "bank")
DEVICES = ("alice-phone", "bob-tablet")
USERS = {"alice-phone": "alice", "bob-tablet": "bob"}
# Links the services and devices use (names match the runner's proxy); chain links are plain HTTP to anvil.
SERVICE_LINKS = ("sp->cc", "cc->bank", "bank->cc")
DEVICE_LINKS = tuple(f"{d}->{peer}" for d in DEVICES for peer in ("sp", "cc"))
CHAIN_LINKS = ("cc->chain", "sp->chain", "bank->chain")
LINK_MODES = ("refuse", "cut", "blackhole", "delay")
# A CC kill either plain, armed at a settlement crash point (CLEARHOUSE_CRASH_AT: it dies with an outbox row
# pending), or `while_pending`: blocks stop for the window, so the kill at its end finds the CC's plans and
# settlements broadcast and unmined.
CRASH_POINTS = ("", "before_broadcast", "after_broadcast", "while_pending")
CLIQUE_CRASH_POINTS = ("", "before_broadcast", "after_broadcast")
DUP_TARGETS = (("bank->cc", "/v1/deposits/notify"), ("sp->cc", "/v1/receive-logs"),
               ("alice-phone->sp", "/v1/usage"), ("bob-tablet->sp", "/v1/usage"),
               ("alice-phone->cc", "/v1/issue-logs"), ("bob-tablet->cc", "/v1/issue-logs"))
CONTENTS = ("song", "article")
DISK_MODES = ("fill", "fill", "lock")


@dataclass(frozen=True)
class Step:
    """One workload action: deposit (user, amount), issue/renew (device, amount), use (device, content), upload."""

    index: int
    action: str
    actor: str
    amount: int = 0
    content: str = ""

    def __str__(self) -> str:
        extra = f" {self.amount}" if self.amount else ""
        extra += f" {self.content}" if self.content else ""
        return f"#{self.index:02d} {self.action} {self.actor}{extra}"


@dataclass(frozen=True)
class Fault:
    """A fault opened before step `start` and closed before step `end` (end == start: instantaneous)."""

    kind: str
    target: str
    start: int
    end: int
    mode: str = ""  # link mode, crash point, disk action or dup path

    def __str__(self) -> str:
        mode = f" {self.mode}" if self.mode else ""
        return f"{self.kind:<12} {self.target:<18}{mode:<20} steps {self.start:>2}..{self.end:<2}"


@dataclass(frozen=True)
class Plan:
    seed: int
    steps: tuple[Step, ...]
    faults: tuple[Fault, ...]
    enabled: tuple[str, ...] = field(default=FAULT_KINDS)
    network: str = "anvil"

    def describe(self) -> str:
        on = f" on {self.network}" if self.network != "anvil" else ""
        lines = [f"seed {self.seed}{on}: {len(self.steps)} steps, {len(self.faults)} faults "
                 f"({', '.join(self.enabled) or 'none'})"]
        lines += ["  fault " + str(f) for f in self.faults]
        lines += ["  step  " + str(s) for s in self.steps]
        return "\n".join(lines)

    def opening_at(self, index: int) -> list[Fault]:
        return [f for f in self.faults if f.start == index]

    def closing_at(self, index: int) -> list[Fault]:
        return [f for f in self.faults if f.end == index and f.end != f.start]


def make_steps(rng: random.Random, count: int) -> list[Step]:
    steps: list[Step] = []
    for user in ("alice", "bob"):
        steps.append(Step(len(steps), "deposit", user, amount=rng.choice((600, 1_000, 1_500))))
    for device in DEVICES:
        steps.append(Step(len(steps), "issue", device, amount=rng.choice((300, 400, 500))))
    while len(steps) < count:
        device = rng.choice(DEVICES)
        roll = rng.random()
        if roll < 0.45:
            steps.append(Step(len(steps), "use", device, content=rng.choice(CONTENTS)))
        elif roll < 0.70:
            steps.append(Step(len(steps), "upload", device))
        elif roll < 0.85:
            steps.append(Step(len(steps), "renew", device, amount=rng.choice((0, 100, 200))))
        else:
            steps.append(Step(len(steps), "deposit", USERS[device], amount=rng.choice((100, 250))))
    return steps


def _window(rng: random.Random, steps: int) -> tuple[int, int]:
    start = rng.randrange(2, steps - 1)
    return start, min(steps, start + rng.randint(1, 3))


def node_list(target: str) -> list[int]:
    """`nodes 1,3` -> [1, 3] (a stop-signer fault's target)."""
    return [int(n) for n in target.removeprefix("nodes ").split(",")]


def partition_groups(target: str, mode: str) -> tuple[list[int], list[int]]:
    """A partition fault's (winning side, losing side): target `0,1|2,3`, mode `keep 2,3` (the fork that heal
    keeps; what the other side included is undone by the reorg)."""
    keep = node_list(mode.removeprefix("keep "))
    sides = [node_list(side) for side in target.split("|")]
    lose = next(side for side in sides if side != keep)
    return keep, lose


def make_fault(rng: random.Random, kind: str, steps: int, network: str = "anvil") -> Fault:
    start, end = _window(rng, steps)
    if kind == "kill":
        target = rng.choice(SERVICES)
        points = CLIQUE_CRASH_POINTS if network == "clique" else CRASH_POINTS
        point = rng.choice(points) if target == "cc" else ""
        return Fault(kind, target, start, end, point)
    if kind == "stop-signer":
        count = rng.choice((1, 2))  # two of four: fewer than floor(N/2)+1 signers online, the chain stalls
        nodes = sorted(rng.sample(range(SIGNER_NODES), count))
        return Fault(kind, "nodes " + ",".join(map(str, nodes)), start, end, "stall" if count == 2 else "")
    if kind == "partition":
        first = sorted([0, *rng.sample(range(1, SIGNER_NODES), 1)])
        second = [n for n in range(SIGNER_NODES) if n not in first]
        keep = rng.choice((first, second))
        return Fault(kind, f"{','.join(map(str, first))}|{','.join(map(str, second))}", start, end,
                     "keep " + ",".join(map(str, keep)))
    if kind == "pause":
        return Fault(kind, rng.choice(SERVICES), start, end)
    if kind == "stall":
        return Fault(kind, "chain", start, end)
    if kind == "restart-node":
        return Fault(kind, "chain", start, start)
    if kind == "link":
        link = rng.choice(SERVICE_LINKS + DEVICE_LINKS + CHAIN_LINKS)
        modes = ("refuse", "cut", "delay") if link in CHAIN_LINKS else LINK_MODES
        return Fault(kind, link, start, end, rng.choice(modes))
    if kind == "disk":
        # fill: the service's filesystem is full (SQLITE_FULL); lock: another process holds its SQLite lock
        return Fault(kind, rng.choice(SERVICES), start, end, rng.choice(DISK_MODES))
    if kind == "dup":
        link, path = rng.choice(DUP_TARGETS)
        return Fault(kind, link, start, start, path)
    raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")


def _overlaps(a: Fault, b: Fault) -> bool:
    return a.start <= b.end and b.start <= a.end


def make_plan(seed: int, faults: tuple[str, ...] | None = None, *, steps: int = 24, max_faults: int = 4,
              network: str = "anvil") -> Plan:
    """The plan of `seed`: `steps` workload steps and 1..max_faults faults of the enabled kinds (default: every
    kind the network has). On Clique the node faults (stop-signer, partition) never overlap one another: a node
    restarted inside a partition would re-dial its static peers across it."""
    kinds = NETWORKS.get(network)
    if kinds is None:
        raise ValueError(f"unknown network {network!r}; one of {sorted(NETWORKS)}")
    faults = kinds if faults is None else faults
    unknown = [k for k in faults if k not in kinds]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown} on {network}; choose from {kinds}")
    seed_text = f"clearhouse-sim:{seed}" if network == "anvil" else f"clearhouse-sim:{network}:{seed}"
    rng = random.Random(seed_text)
    workload = make_steps(rng, steps)
    chosen: list[Fault] = []
    if faults:
        for _ in range(rng.randint(1, max_faults)):
            fault = make_fault(rng, rng.choice(sorted(faults)), steps, network)
            if fault.kind in NETWORK_FAULT_KINDS and any(
                    c.kind in NETWORK_FAULT_KINDS and _overlaps(c, fault) for c in chosen):
                continue
            chosen.append(fault)
    chosen.sort(key=lambda f: (f.start, f.end, f.kind, f.target))
    return Plan(seed, tuple(workload), tuple(chosen), tuple(faults), network)


def parse_seeds(text: str) -> list[int]:
    """`7`, `1-20` or `1,4,9-12`."""
    seeds: list[int] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        seeds.extend(range(int(low), int(high) + 1) if sep else [int(low)])
    return seeds


def parse_faults(text: str | None, network: str = "anvil") -> tuple[str, ...]:
    known = NETWORKS[network]
    if text is None or text == "all":
        return known
    if text in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown} on {network}; choose from {known}")
    return kinds


__all__ = ["Plan", "Step", "Fault", "make_plan", "parse_seeds", "parse_faults", "FAULT_KINDS", "CLIQUE_FAULT_KINDS",
           "NETWORK_FAULT_KINDS", "NETWORKS", "DEVICES", "USERS", "node_list", "partition_groups"]
