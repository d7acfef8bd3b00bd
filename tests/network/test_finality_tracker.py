"""Finality tracker on anvil (real reorgs through anvil_reorg) and on a scripted chain (distinct Clique signers).

anvil runs with confirmations > 0 here so that included and final differ; in production anvil's policy is 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from eth_account import Account
from web3 import Web3

from offchain.chain import AnvilProcess
from offchain.chain.finality import (
    FinalityPolicy,
    FinalityTimeout,
    FinalityTracker,
    Inclusion,
    TxState,
    Web3Reader,
)
from offchain.core.errors import ChainError

SENDER_KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")  # anvil account 0


@pytest.fixture(scope="module")
def anvil_node() -> Iterator[AnvilProcess]:
    with AnvilProcess(hardfork="paris") as node:  # its own node: anvil_reorg would upset the session chain
        yield node


@pytest.fixture()
def w3(anvil_node: AnvilProcess) -> Web3:
    return anvil_node.web3()


def _signed_transfer(w3: Web3, nonce_offset: int = 0) -> tuple[str, bytes]:
    account = Account.from_key(SENDER_KEY)
    tx = {"to": Account.create().address, "value": 1, "gas": 21_000, "chainId": w3.eth.chain_id,
          "nonce": w3.eth.get_transaction_count(account.address, "pending") + nonce_offset,
          "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9}
    signed = account.sign_transaction(tx)
    return "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction)


def _send(w3: Web3) -> str:
    """Send a transfer and return once anvil has mined it (automine answers before the block is sealed: under
    load a check right after the send can still find it pending)."""
    tx_hash, raw = _signed_transfer(w3)
    w3.eth.send_raw_transaction(raw)
    w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)  # type: ignore[arg-type]
    return tx_hash


def _mine(w3: Web3, blocks: int) -> None:
    w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


def test_included_then_final_at_the_configured_depth(w3: Web3) -> None:
    tracker = FinalityTracker(Web3Reader(w3), FinalityPolicy(kind="anvil", confirmations=3))
    tx_hash = _send(w3)  # anvil automines: one block
    first = tracker.check(tx_hash)
    assert first.state is TxState.INCLUDED and first.depth == 1
    _mine(w3, 1)
    assert tracker.check(tx_hash, first.inclusion).state is TxState.INCLUDED
    _mine(w3, 1)
    final = tracker.check(tx_hash, first.inclusion)
    assert (final.state, final.depth, final.inclusion) == (TxState.FINAL, 3, first.inclusion)


def test_anvil_policy_zero_is_final_when_included(w3: Web3) -> None:
    policy = FinalityPolicy.detect(lambda method, params: w3.provider.make_request(method, params)["result"])
    assert policy == FinalityPolicy(kind="anvil", confirmations=0)
    assert FinalityTracker(Web3Reader(w3), policy).check(_send(w3)).state is TxState.FINAL


def test_pending_without_receipt(w3: Web3) -> None:
    tx_hash, _ = _signed_transfer(w3)  # signed, never sent
    assert FinalityTracker(Web3Reader(w3), FinalityPolicy.instant()).check(tx_hash).state is TxState.PENDING


def test_reorg_that_drops_the_block_is_reorged(w3: Web3) -> None:
    tracker = FinalityTracker(Web3Reader(w3), FinalityPolicy(kind="anvil", confirmations=5))
    tx_hash = _send(w3)
    seen = tracker.check(tx_hash)
    _mine(w3, 1)
    assert tracker.check(tx_hash, seen.inclusion).state is TxState.INCLUDED  # positive control
    w3.provider.make_request("anvil_reorg", [2, []])  # type: ignore[arg-type]  # replaces its block
    after = tracker.check(tx_hash, seen.inclusion)
    assert (after.state, after.inclusion, after.now_in) == (TxState.REORGED, seen.inclusion, None)
    assert Web3.to_hex(w3.eth.get_block(seen.inclusion.block_number)["hash"]) != seen.inclusion.block_hash


def test_reorg_that_reincludes_elsewhere_is_reorged_with_the_new_block(w3: Web3) -> None:
    tracker = FinalityTracker(Web3Reader(w3), FinalityPolicy(kind="anvil", confirmations=5))
    tx_hash, raw = _signed_transfer(w3)
    w3.eth.send_raw_transaction(raw)
    w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)  # type: ignore[arg-type]
    seen = tracker.check(tx_hash)
    _mine(w3, 2)
    # the same signed bytes, one block later on the new branch (what an outbox re-broadcast leads to)
    w3.provider.make_request("anvil_reorg", [3, [["0x" + raw.hex(), 1]]])  # type: ignore[arg-type]
    after = tracker.check(tx_hash, seen.inclusion)
    assert after.state is TxState.REORGED
    assert after.now_in is not None and after.now_in.block_number == seen.inclusion.block_number + 1
    again = tracker.check(tx_hash, after.now_in)
    assert again.state is TxState.INCLUDED and again.inclusion == after.now_in


def test_recorded_hash_that_never_was_canonical_is_reorged(w3: Web3) -> None:
    tracker = FinalityTracker(Web3Reader(w3), FinalityPolicy.instant())
    tx_hash = _send(w3)
    real = tracker.check(tx_hash).inclusion
    assert real is not None
    forged = Inclusion(tx_hash, real.block_number, "0x" + "11" * 32)
    assert tracker.check(tx_hash, real).state is TxState.FINAL  # positive control
    assert tracker.check(tx_hash, forged).state is TxState.REORGED


def test_wait_times_out_with_the_last_state(w3: Web3) -> None:
    tracker = FinalityTracker(Web3Reader(w3), FinalityPolicy(kind="anvil", confirmations=50))
    tx_hash = _send(w3)
    with pytest.raises(FinalityTimeout) as info:
        tracker.wait(tx_hash, timeout_s=0.3, poll_s=0.05)
    assert (info.value.tx_hash, info.value.wanted, info.value.state) == (tx_hash, "final", "included")


# --- Clique depth counted in distinct signers, on a scripted chain ----------------------------------------------
@dataclass
class ScriptedChain:
    """A ChainReader over a list of (hash, signer) blocks: the test writes the chain, the tracker reads it."""

    blocks: list[tuple[str, str | None]] = field(default_factory=list)
    receipts: dict[str, int] = field(default_factory=dict)

    def head_number(self) -> int:
        return len(self.blocks) - 1

    def block_hash(self, number: int) -> str | None:
        return self.blocks[number][0] if number < len(self.blocks) else None

    def receipt_block(self, tx_hash: str) -> tuple[int, str] | None:
        number = self.receipts.get(tx_hash)
        return None if number is None else (number, self.blocks[number][0])

    def signer_of(self, number: int, block_hash: str) -> str | None:
        return self.blocks[number][1]

    def seal(self, *signers: str | None) -> None:
        for signer in signers:
            self.blocks.append((f"0x{len(self.blocks):064x}", signer))


def test_clique_defaults_quorum_and_six() -> None:
    assert FinalityPolicy.clique(4) == FinalityPolicy(kind="clique", confirmations=6, distinct_signers=3)
    assert FinalityPolicy.clique(13) == FinalityPolicy(kind="clique", confirmations=7, distinct_signers=7)
    assert FinalityPolicy.clique(4, confirmations=3).confirmations == 3
    with pytest.raises(ChainError) as info:
        FinalityPolicy.clique(4, confirmations=2)
    assert (info.value.confirmations, info.value.quorum) == (2, 3)


def test_clique_depth_without_a_signer_quorum_is_not_final() -> None:
    chain = ScriptedChain()
    chain.seal(None, "A")
    chain.receipts["tx"] = 1
    chain.seal("B", "A", "B", "A", "B", "A", "B")  # eight blocks deep, only two signers: a minority's fork
    tracker = FinalityTracker(chain, FinalityPolicy.clique(4))
    verdict = tracker.check("tx")
    assert (verdict.state, verdict.depth, verdict.signers) == (TxState.INCLUDED, 8, 2)
    chain.seal("C")
    assert tracker.check("tx", verdict.inclusion).state is TxState.FINAL


def test_clique_signer_quorum_without_depth_is_not_final() -> None:
    chain = ScriptedChain()
    chain.seal(None, "A")
    chain.receipts["tx"] = 1
    chain.seal("B", "C", "D")
    tracker = FinalityTracker(chain, FinalityPolicy.clique(4))
    assert tracker.check("tx").state is TxState.INCLUDED
    chain.seal("A", "B")
    assert tracker.check("tx").state is TxState.FINAL


def test_unknown_signers_fall_back_to_plain_depth() -> None:
    chain = ScriptedChain()
    chain.seal(None, None)
    chain.receipts["tx"] = 1
    chain.seal(None, None, None, None)
    tracker = FinalityTracker(chain, FinalityPolicy.clique(4))
    assert tracker.check("tx").state is TxState.INCLUDED
    chain.seal(None)
    verdict = tracker.check("tx")
    assert (verdict.state, verdict.depth) == (TxState.FINAL, 6)


@dataclass
class InconsistentChain(ScriptedChain):
    """A node whose receipt index disagrees with its blocks (reads split across two nodes by failover)."""

    stale_receipts: dict[str, tuple[int, str] | None] = field(default_factory=dict)

    def receipt_block(self, tx_hash: str) -> tuple[int, str] | None:
        return self.stale_receipts.get(tx_hash, super().receipt_block(tx_hash))


def test_block_hash_changed_is_reorged_even_if_the_receipt_still_points_there() -> None:
    chain = InconsistentChain()
    chain.seal(None, "A", "B")
    chain.receipts["tx"] = 1
    recorded = FinalityTracker(chain, FinalityPolicy.instant()).check("tx").inclusion
    assert recorded is not None
    chain.blocks[1] = ("0x" + "22" * 32, "C")  # the block at the recorded height was replaced
    chain.stale_receipts["tx"] = (recorded.block_number, recorded.block_hash)  # ... but the receipt lags
    assert FinalityTracker(chain, FinalityPolicy.instant()).check("tx", recorded).state is TxState.REORGED


def test_receipt_gone_is_reorged_even_if_the_block_hash_is_unchanged() -> None:
    chain = InconsistentChain()
    chain.seal(None, "A", "B")
    chain.receipts["tx"] = 1
    tracker = FinalityTracker(chain, FinalityPolicy.instant())
    recorded = tracker.check("tx").inclusion
    assert tracker.check("tx", recorded).state is TxState.FINAL  # positive control
    chain.stale_receipts["tx"] = None
    assert tracker.check("tx", recorded).state is TxState.REORGED
