"""`clearhouse sim --network clique`: the seed's consortium on a fresh four-signer Clique network (geth v1.13.15,
period 1 s) instead of anvil, and the two faults only a multi-node network has.

- `stop-signer`: one signer node stopped (blocks continue on three), or two of four (fewer than floor(N/2)+1
  online: the chain stalls for the window); started again at the window's end.
- `partition`: two against two (`CliqueNetwork.partition`); at the window's end `heal(prefer=keep)` keeps one
  side's fork and rewinds the other: whatever the losing side included during the window is undone by the reorg.

Each service talks to its own node first (CC node 0, SP node 1, bank node 2, through its fault-proxy chain link)
and has every other node after it in `rpc_urls`, so a stopped node means failover. The devices read the chain at
node 0 (`rpc_url`: the device client takes one endpoint). Everything binds to loopback; the network's folder stays
with a failing seed (geth.log per node).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from offchain.operator.sim.plan import SIGNER_NODES, Fault, node_list, partition_groups

PERIOD_S = 1
SERVICE_NODE = {"cc": 0, "sp": 1, "bank": 2}
FINAL_TIMEOUT_S = 120.0


class CliqueNode:
    """The simulator's chain on Clique, with the surface the runner uses of its anvil `Node` (url, port, start,
    stop), plus the network faults."""

    kind = "clique"

    def __init__(self, workdir: Path, seed: int, progress: Any = None) -> None:
        from offchain.chain.network import CliqueNetwork

        self.net = CliqueNetwork(workdir / "clique", signers=SIGNER_NODES, period_s=PERIOD_S,
                                 seed=f"clearhouse-sim-{seed}".encode(), progress=progress or (lambda _m: None))
        self.stopped: set[int] = set()
        self.note = ""  # what the last fault did to the chain, for the timeline

    # the Node surface ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """A running node's URL (node 0 unless it is stopped): what the harness itself reads."""
        for index, url in enumerate(self.net.rpc_urls):
            if index not in self.stopped:
                return url
        raise RuntimeError("every signer node is stopped")

    @property
    def rpc_urls(self) -> list[str]:
        return self.net.rpc_urls

    def port_for(self, service: str) -> int:
        return self.net.nodes[SERVICE_NODE[service]].http_port

    def start(self) -> None:
        self.net.up()

    def stop(self) -> None:
        self.net.down()

    def fund(self, address: str) -> None:
        """Gas from the dev faucet (the genesis prefunds it), sent through node 0."""
        self.net.fund([address], 10**21)

    # faults ----------------------------------------------------------------------------------------------------
    def open_fault(self, fault: Fault) -> None:
        self.note = ""
        if fault.kind == "stop-signer":
            for index in node_list(fault.target):
                self.net.stop_node(index)
                self.stopped.add(index)
        elif fault.kind == "partition":
            keep, lose = partition_groups(fault.target, fault.mode)
            self._let_side_seal(lose)
            self.net.partition([keep, lose])
            self.note = f"split at block {self.net.head(keep[0])[0]}"
        else:
            raise ValueError(f"{fault.kind} is not a Clique network fault")

    def _let_side_seal(self, side: list[int], blocks: int = 8) -> None:
        """Split when `side` can still seal: a signer that sealed one of the last floor(N/2) blocks may not seal
        the next, so a side whose two signers sealed the last two blocks would stall at once and include nothing
        for the reorg to undo. Waits for that at most `blocks` blocks (block counts, not a clock)."""
        from eth_utils import to_checksum_address

        from offchain.chain.network import rpc

        signers = {self.net.nodes[i].signer for i in side}
        url = self.net.nodes[0].rpc_url
        for _ in range(blocks):
            head = self.net.head(0)[0]
            recent = {to_checksum_address(rpc(url, "clique_getSigner", [hex(n)])) for n in (head, head - 1) if n > 0}
            if not signers <= recent:
                return
            self.net.wait_blocks(1, timeout_s=30.0)

    def close_fault(self, fault: Fault) -> None:
        self.note = ""
        if fault.kind == "stop-signer":
            running = [i for i in range(len(self.net.nodes)) if i not in self.stopped]
            self.note = f"head {max(self.net.head(i)[0] for i in running)} before the restart"
            for index in node_list(fault.target):
                self.net.start_node(index, wait=True)
                self.stopped.discard(index)
            self._heal_keeping(running[0])  # back on one chain, blocks advancing
        elif fault.kind == "partition":
            keep, lose = partition_groups(fault.target, fault.mode)
            ancestor = self.net.common_ancestor(keep + lose)
            undone = max(self.net.head(i)[0] for i in lose) - ancestor
            self._heal_keeping(keep[0])
            self.note = f"fork at block {ancestor}: {undone} block(s) of nodes {lose} undone"
        else:
            raise ValueError(f"{fault.kind} is not a Clique network fault")

    def heal(self) -> None:
        """Every node running, peered, on one chain, sealing (whatever a fault left)."""
        for index in sorted(self.stopped):
            self.net.start_node(index, wait=True)
        self.stopped.clear()
        self._heal_keeping(0)
        self.net.restore(timeout_s=FINAL_TIMEOUT_S)

    def _heal_keeping(self, anchor: int) -> None:
        """`heal(prefer=...)` with every node on `anchor`'s fork. Two signers racing for the same height can fork
        even on one side of a partition (or right after a restart); Clique never joins two forks of equal
        difficulty, so the preferred side must be the nodes that agree with `anchor`, not a fixed list."""
        top = self.net.head(anchor)[0]
        prefer = []
        for i in range(len(self.net.nodes)):  # on anchor's chain: its block at min(own head, anchor's) agrees
            height = min(self.net.head(i)[0], top)
            if self.net.block_hash(i, height) == self.net.block_hash(anchor, height):
                prefer.append(i)
        self.net.heal(prefer=prefer, timeout_s=FINAL_TIMEOUT_S)

    # finality --------------------------------------------------------------------------------------------------
    def wait_final(self, block: int, confirmations: int, timeout_s: float = FINAL_TIMEOUT_S) -> int:
        """Wait until every node is `confirmations` blocks past `block` and all agree on the block there;
        returns the head then. The checker reads the chain only after this: nothing it sees can still be undone
        by a fork of the depth the agents call final."""
        nodes = range(len(self.net.nodes))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            heads = [self.net.head(i)[0] for i in nodes]
            if min(heads) >= block + confirmations and len({self.net.block_hash(i, block) for i in nodes}) == 1:
                return min(heads)
            time.sleep(0.3)
        raise TimeoutError(f"the nodes did not reach block {block + confirmations} on one chain within "
                           f"{timeout_s:.0f} s")


def confirmations_of(settings_path: Path) -> int:
    """The depth the services use: the settings' `confirmations`, else Clique's default for four signers (6)."""
    import json

    from offchain.chain.finality import FinalityPolicy

    value = json.loads(Path(settings_path).read_text()).get("confirmations")
    if value is not None:
        return int(value)
    return int(FinalityPolicy.clique(SIGNER_NODES).confirmations)


__all__ = ["CliqueNode", "confirmations_of", "SERVICE_NODE"]
