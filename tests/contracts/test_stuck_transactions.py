"""A transaction that stays unmined (underpriced: the base fee rose above what it pays) is replaced at the same nonce
with higher fees, through the outbox: the replacement's hash and bytes are recorded before the broadcast, the
settlement worker replaces a row only once it is older than its stuck timeout, and the nonce is used once.

Runs on its own anvil with automine off, so blocks are mined only when the test says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from web3 import Web3
from web3.exceptions import TransactionNotFound

from offchain.chain import ClearhouseChain, deploy
from offchain.chain.devnode import AnvilProcess
from offchain.clearing_center.settlement import SettlementWorker
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import SettlementOutbox
from offchain.core.messages import Role, keccak
from offchain.storage import make_engine, session_scope

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def node(actors: dict[str, Any]) -> Iterator[tuple[Web3, Any]]:
    with AnvilProcess(hardfork="paris").start() as anvil:
        w3 = anvil.web3()
        for actor in (actors["deployer"], actors["authority"]):
            w3.provider.make_request("anvil_setBalance", [actor.address, hex(10**21)])  # type: ignore[arg-type]
        yield w3, deploy(w3, actors["deployer"].key, actors["authority"].address, root=ROOT)


def rpc(w3: Web3, method: str, *params: Any) -> Any:
    return w3.provider.make_request(method, list(params))  # type: ignore[arg-type]


def stuck_registration(w3: Web3, chain: ClearhouseChain) -> tuple[str, int, bytes]:
    """Send registerMember with automine off, then raise the next block's base fee above what it pays: it cannot
    be mined (anvil would drop it from the pool at the next block, so none is mined until the test says so)."""
    rpc(w3, "evm_setAutomine", False)
    recorded: list[tuple[str, int, bytes]] = []
    account = "0x" + os.urandom(20).hex()
    chain.send_via_outbox("registerMember", w3.to_checksum_address(account), int(Role.BANK),
                          keccak(account.encode()), os.urandom(32), bytes(32), 1, 2**39,
                          record=lambda h, n, raw: recorded.append((h, n, raw)))
    base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
    rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(base_fee * 1000))
    tx_hash = recorded[0][0]
    with pytest.raises(TransactionNotFound):
        w3.eth.get_transaction_receipt(tx_hash)
    pending = w3.eth.get_transaction(tx_hash)
    assert pending["blockNumber"] is None  # in the mempool
    assert pending["maxFeePerGas"] < w3.eth.get_block("pending")["baseFeePerGas"]  # underpriced: stuck
    return recorded[0]


def test_an_underpriced_transaction_is_replaced_at_the_same_nonce(node: tuple[Web3, Any],
                                                                  actors: dict[str, Any]) -> None:
    w3, deployment = node
    chain = ClearhouseChain(w3, deployment, actors["authority"].key)
    old_hash, nonce, raw = stuck_registration(w3, chain)
    outbox: list[tuple[str, int, bytes]] = []
    new_hash = chain.replace_stuck(raw, record=lambda h, n, r: outbox.append((h, n, r)))
    assert new_hash is not None and new_hash != old_hash
    assert outbox and outbox[0][:2] == (new_hash, nonce)  # recorded before the broadcast
    rpc(w3, "evm_mine")
    receipt = w3.eth.get_transaction_receipt(new_hash)
    assert receipt["status"] == 1 and w3.eth.get_transaction(new_hash)["nonce"] == nonce
    assert w3.eth.get_transaction_count(chain.sender, "latest") == nonce + 1
    assert chain.replace_stuck(raw) is None  # the nonce is used: nothing more to replace
    rpc(w3, "evm_setAutomine", True)


def test_the_settlement_worker_replaces_only_a_row_past_its_stuck_timeout(node: tuple[Web3, Any],
                                                                          actors: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    w3, deployment = node
    chain = ClearhouseChain(w3, deployment, actors["authority"].key)
    now = [1_000_000]
    store = CcStore(make_engine(f"sqlite:///{tmp_path / 'cc.db'}"), lambda: now[0])
    store.create_schema()
    old_hash, nonce, raw = stuck_registration(w3, chain)
    with session_scope(store.engine) as session:
        session.add(SettlementOutbox(status="sent", tx_hash=old_hash, nonce=nonce, raw_tx=raw, created_at=now[0],
                                     updated_at=now[0]))
    worker = SettlementWorker(store, chain, stuck_after_s=120)
    now[0] += 119
    assert list(worker.recover().values()) == ["in_mempool"]
    assert store.unfinished_settlements()[0].tx_hash == old_hash  # positive control: not yet stuck, not replaced
    now[0] += 1
    assert list(worker.recover().values()) == ["in_mempool"]
    row = store.unfinished_settlements()[0]
    assert row.tx_hash != old_hash and row.error == f"replaced {old_hash} (unmined after the stuck timeout)"
    rpc(w3, "evm_mine")
    assert list(worker.recover().values()) == ["confirmed"]
    with session_scope(store.engine) as session:
        assert session.scalars(select(SettlementOutbox.status)).all() == ["confirmed"]
    rpc(w3, "evm_setAutomine", True)


def pending_hashes(w3: Web3, sender: str) -> list[str]:
    pool = rpc(w3, "txpool_content")["result"]["pending"]
    by_sender = next((txs for address, txs in pool.items() if address.lower() == sender.lower()), {})
    return [tx["hash"] for tx in by_sender.values()]


def test_a_wait_replaces_its_stuck_transaction_and_returns_the_mined_one(node: tuple[Web3, Any],
                                                                        actors: dict[str, Any]) -> None:
    """The bank's path: `send` waits; past `stuck_after_s` the wait itself replaces the transaction."""
    import threading

    w3, deployment = node
    chain = ClearhouseChain(w3, deployment, actors["authority"].key, stuck_after_s=0.2, receipt_timeout_s=120)
    rpc(w3, "anvil_setBalance", chain.sender, hex(10**30))  # the earlier tests left a very high base fee
    rpc(w3, "evm_setAutomine", False)
    account = w3.to_checksum_address("0x" + os.urandom(20).hex())
    result: dict[str, Any] = {}

    def send() -> None:
        try:
            result["receipt"] = chain.send("registerMember", account, int(Role.BANK), keccak(account.encode()),
                                           os.urandom(32), bytes(32), 1, 2**39)
        except Exception as exc:  # noqa: BLE001 - reported to the test thread
            result["error"] = exc

    base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
    sender = threading.Thread(target=send)
    sender.start()
    seen: list[str] = []
    deadline = 600
    while deadline and len(set(seen)) < 2:  # the first transaction, then its replacement at the same nonce
        hashes = pending_hashes(w3, chain.sender)
        if hashes and not seen:
            rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(base_fee * 1000))  # now it is underpriced: stuck
        seen += [h for h in hashes if h not in seen]
        deadline -= 1
        sender.join(0.1)
    assert len(set(seen)) == 2, (seen, result)
    rpc(w3, "evm_mine")
    sender.join(60)
    rpc(w3, "evm_setAutomine", True)
    assert "error" not in result, result.get("error")
    receipt = result["receipt"]
    assert receipt["status"] == 1 and "0x" + bytes(receipt["transactionHash"]).hex() == seen[1]
    assert chain.is_active(account, int(Role.BANK))
