"""A real four-signer Clique network: sealing, node loss, a stalled chain, a 2-2 partition that is undone, failover.

Every wait is bounded; what is asserted is what the chain says (heads, hashes, receipts), compared with an
independent reading of every node where the finality tracker is the thing under test.
"""

from __future__ import annotations

import json

import pytest
from eth_account import Account
from web3 import Web3

from offchain.chain import ClearhouseChain, deploy
from offchain.chain.failover import connect
from offchain.chain.finality import FinalityPolicy, FinalityTracker, Inclusion, TxState, Web3Reader
from offchain.chain.network import CliqueNetwork, NetworkError, dev_accounts, rpc

pytestmark = pytest.mark.network
VALID_UNTIL_MAX = 2**40 - 1


def _tracker(w3: Web3) -> FinalityTracker:
    policy = FinalityPolicy.detect(lambda method, params: w3.provider.make_request(method, params)["result"])
    assert policy == FinalityPolicy(kind="clique", confirmations=6, distinct_signers=3)
    return FinalityTracker(Web3Reader(w3), policy)


def _signed_transfer(net: CliqueNetwork, node: int, sender: int) -> tuple[str, str]:
    """A 1-wei transfer from dev account `sender`, signed with the nonce node `node` expects: (hash, raw hex)."""
    address, key = dev_accounts(sender + 1)[sender]
    nonce = int(rpc(net.rpc_urls[node], "eth_getTransactionCount", [address, "pending"]), 16)
    tx = {"to": Account.create().address, "value": 1, "gas": 21_000, "nonce": nonce, "chainId": net.chain_id,
          "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9}
    signed = Account.sign_transaction(tx, key)
    return "0x" + bytes(signed.hash).hex(), "0x" + bytes(signed.raw_transaction).hex()


def _receipt_on(net: CliqueNetwork, node: int, tx_hash: str) -> Inclusion | None:
    receipt = rpc(net.rpc_urls[node], "eth_getTransactionReceipt", [tx_hash])
    return Inclusion(tx_hash, int(receipt["blockNumber"], 16), receipt["blockHash"]) if receipt else None


def test_four_signers_peer_and_each_seals(network: CliqueNetwork) -> None:
    rows = network.status()
    assert [r.up for r in rows] == [True] * 4 and all(r.peers == 3 for r in rows)
    seen: set[str] = set()
    for _ in range(6):  # the in-turn signer seals first; four rounds of four blocks cover every signer
        network.wait_blocks(4)
        seen = set().union(*(r.last_sealed for r in network.status(window=16)))
        if seen == set(network.signers):
            break
    assert seen == set(network.signers)
    file = json.loads(network.network_file.read_text())
    assert (file["chain_id"], file["signers"], file["rpc_urls"]) == (network.chain_id, network.signers,
                                                                      network.rpc_urls)
    assert all(node["pid"] for node in file["nodes"])
    assert rpc(network.rpc_urls[0], "eth_getBlockByNumber", ["0x0", False])["extraData"].startswith("0x" + "00" * 32)


def test_deploy_and_member_registration_reach_final(network: CliqueNetwork, w3: Web3) -> None:
    faucet, key = network.faucet
    deployment = deploy(w3, key, faucet, network="clique")
    authority = ClearhouseChain(w3, deployment, key)
    tracker = _tracker(w3)
    receipts = [authority.register_member(Account.create().address, 2, bytes([i]) * 32, bytes([9]) * 32, 0,
                                          VALID_UNTIL_MAX) for i in range(1, 4)]
    verdicts = [tracker.wait(Web3.to_hex(r["transactionHash"]), timeout_s=60) for r in receipts]
    assert [v.state for v in verdicts] == [TxState.FINAL] * 3
    assert all(v.depth >= 6 and v.signers >= 3 for v in verdicts)
    assert authority.deployment.chain_id == network.chain_id


def test_blocks_continue_with_one_signer_stopped(network: CliqueNetwork, w3: Web3) -> None:
    network.stop_node(3)
    assert not network.is_running(3)
    before = max(network.head(i)[0] for i in range(3))
    network.wait_blocks(6, nodes=[0, 1, 2], timeout_s=60)
    tx_hash, raw = _signed_transfer(network, 0, sender=1)
    w3.eth.send_raw_transaction(raw)
    verdict = _tracker(w3).wait(tx_hash, timeout_s=60)
    assert verdict.state is TxState.FINAL and verdict.inclusion.block_number > before


def test_two_of_four_stopped_stalls_then_resumes(network: CliqueNetwork) -> None:
    at_stop = max(network.head(i)[0] for i in range(4))
    network.stop_node(2)
    network.stop_node(3)
    stalled = network.wait_stalled(nodes=[0, 1], quiet_periods=4, timeout_s=60)
    # the two left may seal at most floor(N/2) = 2 more blocks: each signs at most one of any 3 consecutive
    assert stalled - at_stop <= 2
    assert max(network.head(i)[0] for i in (0, 1)) == stalled
    network.start_node(2)
    network.start_node(3)
    assert network.wait_blocks(3, timeout_s=90) > stalled


def test_partition_two_against_two_reorgs_the_losing_side(network: CliqueNetwork, w3: Web3) -> None:
    """Split 2-2, send one transfer into each side, heal with the side that did not include its transfer (or
    side B) winning: the tracker says reorged exactly where every node's block hash at the recorded height
    changed, and the same signed bytes re-broadcast land once."""
    sides = ([0, 1], [2, 3])
    for _attempt in range(3):
        network.partition(sides)
        sent = {0: _signed_transfer(network, 0, sender=1), 1: _signed_transfer(network, 2, sender=2)}
        for side, (_, raw) in sent.items():
            rpc(network.rpc_urls[sides[side][0]], "eth_sendRawTransaction", [raw])
        network.wait_stalled(quiet_periods=3, timeout_s=60)
        seen = {side: _receipt_on(network, sides[side][0], tx_hash) for side, (tx_hash, _) in sent.items()}
        if any(seen.values()):
            break
        network.heal()  # neither side could seal after the split: try again
    else:
        pytest.fail("no side of three 2-2 partitions included its transaction")
    loser = 0 if seen[0] is not None else 1
    network.heal(prefer=sides[1 - loser], timeout_s=90)
    network.wait_blocks(1, timeout_s=60)

    tracker = _tracker(w3)
    for side, inclusion in seen.items():
        if inclusion is None:
            continue
        canonical = {network.block_hash(i, inclusion.block_number) for i in range(4)}
        verdict = tracker.check(inclusion.tx_hash, inclusion)
        assert (verdict.state is TxState.REORGED) == (canonical != {inclusion.block_hash})  # the oracle
    assert tracker.check(sent[loser][0], seen[loser]).state is TxState.REORGED

    winner_hash = sent[1 - loser][0]
    assert tracker.wait(winner_hash, seen[1 - loser], timeout_s=90).state is TxState.FINAL
    loser_hash, loser_raw = sent[loser]
    if _receipt_on(network, 0, loser_hash) is None:  # the rewound side dropped it: re-broadcast the same bytes
        rpc(network.rpc_urls[0], "eth_sendRawTransaction", [loser_raw])
    again = tracker.wait(loser_hash, timeout_s=90)
    assert again.state is TxState.FINAL and again.inclusion.block_hash != seen[loser].block_hash
    sender = dev_accounts(loser + 2)[loser + 1][0]
    assert int(rpc(network.rpc_urls[3], "eth_getTransactionCount", [sender, "latest"]), 16) == \
        int(rpc(network.rpc_urls[3], "eth_getTransactionCount", [sender, "pending"]), 16)


def test_heal_keeps_a_preferred_side_that_sealed_nothing_after_the_split(network: CliqueNetwork) -> None:
    """The preferred side may hold the fork point itself: two signers of four cannot seal while they sealed the last
    two blocks, so after a 2-2 split one side may seal nothing. heal(prefer=...) then rewinds the other side to the
    fork point and every node agrees there, though nobody can seal until heal resumes the rewound side. (heal used
    to wait for a block above the fork point, for ever: the cause of the 2-2 partition test's CI time-outs, where
    the side that included its transfer lost.) Here the preferred side is the one holding the last two seals."""
    try:
        for _attempt in range(3):
            fork, fork_hash = network.hold_sealing(timeout_s=90)
            recent = {rpc(network.rpc_urls[0], "clique_getSigner", [hex(n)]).lower() for n in (fork, fork - 1)}
            able = next(side for side in ([0, 1], [2, 3])
                        if any(network.signers[i].lower() not in recent for i in side))
            kept = [i for i in range(4) if i not in able]
            network.partition([kept, able])
            network.start_sealing(able)
            try:
                network.wait_blocks(1, nodes=able, timeout_s=20)
                break
            except NetworkError:  # seen once: a miner started after a heal sealed nothing for 60 s
                network.restore()
        else:
            pytest.fail("the side able to seal sealed nothing in three 2-2 partitions")
        orphaned = network.head(able[0])
        assert {network.head(i) for i in kept} == {(fork, fork_hash)}  # the preferred side holds the fork point
        network.heal(prefer=kept, timeout_s=60)
        assert {network.block_hash(i, fork) for i in range(4)} == {fork_hash}
        assert {network.block_hash(i, orphaned[0]) for i in range(4)} & {orphaned[1]} == set()
        assert all(network.peer_count(i) == 3 for i in range(4))
    finally:
        network.restore()


def test_hold_sealing_brings_nodes_on_two_forks_to_one_head(network: CliqueNetwork) -> None:
    """Nodes that hold different heads when sealing stops (here: two sides of a partition, each sealing alone)
    never settle it themselves, because nobody seals the block that would decide: hold_sealing rewinds the nodes
    off the highest head, re-peers them and returns the one head all four hold, with sealing still stopped."""
    sides = ([0, 1], [2, 3])
    for _attempt in range(3):
        network.partition(sides)
        network.wait_stalled(quiet_periods=3, timeout_s=60)
        before = {i: network.head(i) for i in range(4)}
        if len(set(before.values())) > 1:
            break
        network.heal()  # neither side sealed after the split: try again
    else:
        pytest.fail("no 2-2 partition of three left the sides on different heads")
    try:
        number, block_hash = network.hold_sealing(timeout_s=90)
        assert {network.head(i) for i in range(4)} == {(number, block_hash)}
        assert number == max(n for n, _hash in before.values())  # the highest head is the one kept
        assert all(network.peer_count(i) == 3 for i in range(4))
        network.wait_stalled(quiet_periods=3, timeout_s=60)
        assert network.head(0) == (number, block_hash)  # nobody sealed meanwhile
    finally:
        network.restore()


def test_hold_sealing_brings_back_a_node_behind_its_connected_peers(network: CliqueNetwork) -> None:
    """A node that falls behind while its peers stay connected (here: rewound three blocks) does not sync again on
    its own: geth syncs from a peer only when the difficulty it recorded for that peer (at the handshake, or from
    a rare full-block broadcast) beats its own. hold_sealing drops and re-dials it, and it syncs the others' head.
    (The CI failure this covers: a tie left one pair of connected nodes on another head, and the rewound pair
    never caught up.)"""
    network.wait_blocks(5)  # every handshake is older than the block the node is rewound to
    number, block_hash = network.hold_sealing(timeout_s=90)
    try:
        rpc(network.nodes[3].rpc_url, "debug_setHead", [hex(number - 3)])
        assert network.head(3)[0] == number - 3 and network.peer_count(3) == 3  # behind, yet connected
        assert network.hold_sealing(timeout_s=60) == (number, block_hash)
        assert {network.head(i) for i in range(4)} == {(number, block_hash)}
    finally:
        network.restore()


def test_wait_ready_dials_a_missing_peer_again(network: CliqueNetwork) -> None:
    """A node cut off from the others (as after a static dial that failed and backs off) is dialled again by
    wait_ready, which then sees every node peered with every other."""
    network.partition([[0, 1, 2], [3]])
    assert network.peer_count(3) == 0  # positive control: nothing re-dials across the split by itself
    try:
        network.wait_ready(timeout_s=90)
        assert all(network.peer_count(i) == 3 for i in range(4))
    finally:
        network.restore()


def test_failover_moves_off_a_stopped_node(network: CliqueNetwork) -> None:
    w3 = connect(network.rpc_urls)
    first = w3.provider.current_url
    assert w3.eth.block_number > 0 and first == network.rpc_urls[0]  # positive control
    network.stop_node(0)
    assert w3.eth.block_number > 0
    assert w3.provider.current_url == network.rpc_urls[1] and w3.provider.switches == 1
    tx_hash, raw = _signed_transfer(network, 1, sender=3)
    w3.eth.send_raw_transaction(raw)
    assert _tracker(w3).wait(tx_hash, until=TxState.INCLUDED, timeout_s=60).state is not TxState.PENDING
