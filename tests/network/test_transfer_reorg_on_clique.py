"""A `requestTransfers` included on the losing side of a 2-vs-2 partition of the four-signer Clique network, then
undone by the heal: the CC notices, every payee is paid once, and `clearhouse reconcile` is clean.

The services and the consortium are those of test_agents_on_clique.py (its `pipeline`/`line` fixtures: every
service talks to node 2 first). Sealing is stopped everywhere and restarted node by node, so the test decides
which block holds what: the settlement is in every pool before the partition (both sides include it), the
transfer request reaches only the losing side (partitioned by then), whose second signer seals it. The winning
side seals one block; `heal(prefer=winners)` rewinds the losers. What geth does next is what is asserted: the
same signed transaction (same hash) lands again on the winning chain with the same request ids, never a second
request; the bank pays each id once, after it is final on the canonical chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eth_utils import keccak, to_checksum_address

from offchain.chain.network import CliqueNetwork, rpc
from offchain.operator.demo import _wait_for
from test_agents_on_clique import ORDER, WAIT_S, Pipeline, issue_and_download, line, pipeline, use_and_upload

__all__ = ["line", "pipeline"]  # the fixtures, imported for pytest

REQUEST_TRANSFERS = "0x" + keccak(text="requestTransfers(bytes32[])")[:4].hex()


def test_partition_reorg_undoes_a_transfer_request_payees_paid_once(line: Pipeline, tmp_path: Path) -> None:
    net, services_node = line.net, ORDER[0]
    device = issue_and_download(line, "d-partition")
    try:
        net.hold_sealing(timeout_s=WAIT_S)
        first, second, winners = pick_sides(net, services_node)
        use_and_upload(line, device, ("Film: The Ledger",))
        settle_tx = wait_for_settle_tx_in_every_pool(line)
        losers = [first, second]
        net.partition([winners, losers])
        mine_on(net, first)  # the losing side's first block: the settlement (both sides hold it)
        _wait_for("the settlement included on the losing side",
                  lambda: rpc(net.nodes[services_node].rpc_url, "eth_getTransactionReceipt", [settle_tx]) is not None,
                  WAIT_S, "see cc.log")
        request_tx = wait_for_request_in_pool(line, services_node)  # sent to node 2: the losing side only
        mine_on(net, second)  # the losing side's second block: the transfer request
        lost_block = wait_for_receipt(net, services_node, request_tx)["blockHash"]
        _wait_for("the CC to mirror the request and follow its transaction as included", lambda: line.cc_rows(
            f"SELECT state FROM cc_chain_txs WHERE tx_hash = '{request_tx}'") == [("included",)]
            and bool(line.cc_rows(f"SELECT 1 FROM transfer_requests WHERE tx_hash = '{request_tx}'")),
            WAIT_S, "see cc.log")
        lost_ids = {rid for (rid,) in line.cc_rows(
            f"SELECT request_id FROM transfer_requests WHERE tx_hash = '{request_tx}'")}
        assert line.cc_rows("SELECT count(*) FROM transfer_requests WHERE status = 'confirmed'") == [(0,)]
        fork_point = net.head(winners[0])[0]
        for i in winners:  # the winning side seals one block (with the settlement, without the request)
            mine_on(net, i)
        _wait_for("the winning side's block", lambda: all(net.head(i)[0] > fork_point for i in winners), WAIT_S,
                  "geth.log")
        net.heal(prefer=winners)  # the losers are rewound: their two blocks are undone
    finally:
        device.close()
    line.quiesce_and_reconcile(tmp_path / "audit")  # every use settled, requested, paid and confirmed: exact sums

    # what really happened: the same signed transaction landed again elsewhere, with the same request ids
    receipt = wait_for_receipt(net, services_node, request_tx)
    assert receipt["blockHash"] != lost_block
    # the bank confirmed on chain (quiescence); its signed receipt reaches the CC once that confirmation is final
    _wait_for("the CC to hold the bank's receipts", lambda: line.cc_rows(
        "SELECT count(*) FROM transfer_requests WHERE status <> 'confirmed'") == [(0,)], WAIT_S, "see cc.log")
    rows = line.cc_rows(f"SELECT request_id, status FROM transfer_requests WHERE tx_hash = '{request_tx}'")
    assert {rid for rid, _status in rows} == lost_ids and all(status == "confirmed" for _rid, status in rows)
    assert line.cc_rows("SELECT count(*) FROM transfer_requests WHERE status IN ('requested', 'sent_to_bank')") \
        == [(0,)]
    followed = line.cc_rows(f"SELECT state, reorgs FROM cc_chain_txs WHERE tx_hash = '{request_tx}'")
    assert followed and followed[0][0] == "final" and followed[0][1] >= 1, followed
    assert line.cc_rows("SELECT count(DISTINCT tx_hash) FROM transfer_requests") == [(1,)]  # one request, ever
    cc_log = (line.processes.workdir / "cc.log").read_text(errors="replace")
    assert "finality.reorged" in cc_log and request_tx in cc_log


# --- sealing by hand -----------------------------------------------------------------------------------------------
def recent_sealers(net: CliqueNetwork) -> tuple[int, int]:
    """The nodes that sealed the head and the block before it."""
    by_signer = {to_checksum_address(n.signer): n.index for n in net.nodes}
    head = net.head(0)[0]
    return tuple(by_signer[to_checksum_address(rpc(net.nodes[0].rpc_url, "clique_getSigner", [hex(b)]))]
                 for b in (head, head - 1))  # type: ignore[return-value]


def mine_on(net: CliqueNetwork, node: int) -> None:
    """Let `node` seal: it seals one block and then must wait (a Clique signer seals at most one of any
    floor(N/2)+1 = 3 consecutive blocks), so with the other signers of its side stopped it seals exactly one."""
    net.start_sealing([node])


def pick_sides(net: CliqueNetwork, node: int) -> tuple[int, int, list[int]]:
    """(first, second, winners): the losing side holds `node` and can seal two blocks (first, then second); the
    winning side holds the head's sealer and one more signer, which can seal one. Clique forbids a signer any
    block within two of its last: the losers are the head's previous sealer and a signer of neither of the last
    two blocks. If `node` sealed the head, one more block is sealed first by another signer."""
    head_sealer, previous = recent_sealers(net)
    if node == head_sealer:
        other = next(i for i in range(4) if i not in (head_sealer, previous))
        before = net.head(0)[0]
        mine_on(net, other)
        _wait_for("one block sealed by another signer", lambda: net.head(0)[0] > before, WAIT_S, "geth.log")
        net.hold_sealing(timeout_s=WAIT_S)
        head_sealer, previous = recent_sealers(net)
    fresh = [i for i in range(4) if i not in (head_sealer, previous)]
    first = node if node in fresh else next(i for i in fresh)
    second = previous
    losers = {first, second}
    assert node in losers, (node, head_sealer, previous)
    return first, second, [i for i in range(4) if i not in losers]


# --- what the CC sent ----------------------------------------------------------------------------------------------
def wait_for_settle_tx_in_every_pool(line: Pipeline) -> str:
    sent: list[str] = []

    def everywhere() -> bool:
        sent[:] = [tx for (tx,) in line.cc_rows("SELECT tx_hash FROM settlement_outbox WHERE status = 'sent'")]
        return bool(sent) and all(rpc(n.rpc_url, "eth_getTransactionByHash", [sent[0]]) is not None
                                  for n in line.net.nodes)

    _wait_for("the CC's settle transaction in every node's pool", everywhere, WAIT_S, "see cc.log and sp.log")
    return sent[0]


def wait_for_request_in_pool(line: Pipeline, node: int) -> str:
    cc = to_checksum_address(line.consortium.member("cc").eth_address)
    found: list[str] = []

    def pending_request() -> bool:
        pending = rpc(line.net.nodes[node].rpc_url, "txpool_content")["pending"]
        mine = {to_checksum_address(a): txs for a, txs in pending.items()}.get(cc, {})
        found[:] = [tx["hash"] for tx in mine.values() if str(tx["input"]).startswith(REQUEST_TRANSFERS)]
        return bool(found)

    _wait_for("the CC's requestTransfers in the losing side's pool", pending_request, WAIT_S, "see cc.log")
    return found[0]


def wait_for_receipt(net: CliqueNetwork, node: int, tx_hash: str) -> Any:
    found: list[Any] = []

    def has() -> bool:
        found[:] = [rpc(net.nodes[node].rpc_url, "eth_getTransactionReceipt", [tx_hash])]
        return found[0] is not None

    _wait_for(f"the receipt of {tx_hash} on node {node}", has, WAIT_S, "geth.log")
    return found[0]
