"""How many chain reads the clearing center's intake makes per receive item, and that the reads it saves never
outlive the request that made them.

The CC here checks members as the served one does (`member_verifier`: CA, CRL file and on-chain status), and
every JSON-RPC request the intake sends is counted at the web3 provider. The count is deterministic (no cache
depends on time), so a ceiling per item is a legitimate assertion: before, one item cost five reads (the SP's
status, the device's status, the issue log, the policy, the issue log again); now the SP, each device and each
policy are read once per request and the issue log once per item. The revocation tests prove that nothing read
in one request is reused by the next.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_utils import function_abi_to_4byte_selector
from web3 import Web3
from test_clearing_center import PRICE, CcWorld, make_world

from offchain.chain import ClearhouseChain
from offchain.chain.failover import http_provider
from offchain.clearing_center.agent import ClearingCenter
from offchain.clearing_center.bodies import ReceiveItem
from offchain.core import messages
from offchain.core.errors import CertificateRevoked
from offchain.core.messages import UsageBatch, UsageLog
from offchain.transport.wiring import member_verifier
from offchain.trust.ca import CRL_FILE

ITEMS = 8  # receive items in the multi-item request


@dataclass
class Reads:
    """The JSON-RPC requests sent while counting: by method, and eth_call by contract function."""

    methods: Counter[str]
    calls: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.methods.values())


@contextmanager
def counted(world: CcWorld) -> Iterator[Reads]:
    """Count every JSON-RPC request the CC's provider posts inside the block (web3 caches its request function
    with the provider's bound `make_request`, so the count is taken one level below, where requests go out)."""
    provider = world.cc.chain.w3.provider
    selectors = {function_abi_to_4byte_selector(abi): abi["name"] for abi in world.cc.chain.contract.abi
                 if abi.get("type") == "function"}
    reads = Reads(Counter(), Counter())
    original = provider._make_request

    def post(method: Any, request_data: bytes) -> Any:
        reads.methods[str(method)] += 1
        if method == "eth_call":
            data = json.loads(request_data)["params"][0]
            reads.calls[selectors.get(bytes.fromhex((data.get("data") or data["input"])[2:10]), "?")] += 1
        return original(method, request_data)

    provider._make_request = post  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        del provider._make_request  # the class's method again


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path) -> CcWorld:
    """The CC world of test_clearing_center with the served CC's member verifier (on-chain status included) and
    its own provider as a served CC builds it (`http_provider`: eth_chainId asked once, nothing else cached)."""
    made = make_world(chain_env, tmp_path)
    settings = SimpleNamespace(ca_path=made.ca.root_path, crl_path=made.ca.directory / CRL_FILE)
    w3 = Web3(http_provider(str(chain_env.w3.provider.endpoint_uri), timeout_s=60))
    chain = ClearhouseChain(w3, chain_env.deployment, chain_env.actors["clearing_center"].key)
    made.cc = ClearingCenter(made.store, chain, member_verifier(settings, chain, time.time),
                             chain_env.actors["clearing_center"].key, made.creds["clearing_center"].cert_pem,
                             issue_expiry_s=3600)
    return made


def _items(world: CcWorld, serial: bytes, count: int, *, first_seq: int = 0, device: str = "device",
           policy_ids: tuple[bytes, ...] = ()) -> list[ReceiveItem]:
    """`count` one-log receive items of consecutive seqs on `serial`, cycling through `policy_ids`."""
    policies = policy_ids or (world.policy_id,)
    items = []
    for seq in range(first_seq, first_seq + count):
        log = UsageLog(serial=serial, seq=seq, policy_id=policies[seq % len(policies)], fee=PRICE,
                       receiver=world.peers["provider"].eth_address, used_at=int(time.time()))
        batch = UsageBatch.from_logs([log])
        items.append(world.receive_item(batch, messages.sign(batch, world.domain, world.env.actors[device].key),
                                        device))
    return items


def _second_policy(world: CcWorld) -> bytes:
    content_id = messages.keccak(b"content:film")
    world.env.client("content_provider").register_policy(
        content_id, 1, PRICE, [(world.env.actors["content_provider"].address, 10_000)], bytes(32))
    return messages.policy_id(content_id, 1)


# --- reads per item --------------------------------------------------------------------------------------------
def test_intake_reads_issue_log_once_per_item_and_each_member_and_policy_once_per_request(world: CcWorld) -> None:
    world.deposit("alice", 10_000)
    log, _ = world.issue("reads", amount=ITEMS * PRICE)
    items = _items(world, log.serial, ITEMS)
    with counted(world) as reads:
        answer = world.receive(*items)
    assert answer["rejected"] == [] and len(answer["accepted"]) == ITEMS  # every item admitted: a real intake
    assert reads.methods == Counter({"eth_call": reads.total}), reads  # reads only, no block or receipt polls
    assert reads.calls == Counter({"issueLog": ITEMS, "isActive": 2, "policy": 1}), reads.calls
    assert reads.total <= ITEMS + 3  # 1.375 reads per item for 8 items (it was 5 per item: 40)


def test_intake_reads_scale_with_distinct_devices_and_policies_not_items(world: CcWorld) -> None:
    world.deposit("alice", 10_000)
    world.deposit("bob", 10_000, tag="d2")
    alice, _ = world.issue("reads-a", amount=ITEMS * PRICE)
    bob, _ = world.issue("reads-b", user_id="bob", device="device2", amount=ITEMS * PRICE)
    policies = (world.policy_id, _second_policy(world))
    items = [*_items(world, alice.serial, ITEMS // 2, policy_ids=policies),
             *_items(world, bob.serial, ITEMS // 2, device="device2", policy_ids=policies)]
    with counted(world) as reads:
        answer = world.receive(*items)
    assert answer["rejected"] == [] and len(answer["accepted"]) == ITEMS
    assert reads.calls == Counter({"issueLog": ITEMS, "isActive": 3, "policy": 2}), reads.calls  # SP + 2 devices


# --- nothing outlives its request --------------------------------------------------------------------------------
def test_intake_refuses_sp_revoked_on_chain_after_an_accepted_request(world: CcWorld) -> None:
    world.deposit("alice", 10_000)
    log, _ = world.issue("revoked-sp", amount=ITEMS * PRICE)
    first, later = _items(world, log.serial, 1), _items(world, log.serial, 2, first_seq=1)
    assert len(world.receive(*first)["accepted"]) == 1  # the positive control: same SP, same CC, one request earlier
    world.env.client("authority").revoke_member(world.peers["provider"].eth_address)  # on chain only, not the CRL
    answer = world.receive(*later)
    assert answer["accepted"] == []
    assert [(r["index"], r["error"], r["fields"]["source"]) for r in answer["rejected"]] == [
        (0, CertificateRevoked.code, "chain"), (1, CertificateRevoked.code, "chain")]
    assert answer["rejected"][0]["fields"]["eth_address"] == world.peers["provider"].eth_address


def test_intake_refuses_device_revoked_on_chain_after_an_accepted_request(world: CcWorld) -> None:
    world.deposit("alice", 10_000)
    log, _ = world.issue("revoked-device", amount=ITEMS * PRICE)
    first, later = _items(world, log.serial, 1), _items(world, log.serial, 2, first_seq=1)
    assert len(world.receive(*first)["accepted"]) == 1
    world.env.client("authority").revoke_member(world.peers["device"].eth_address)
    answer = world.receive(*later)
    assert answer["accepted"] == []
    assert [(r["index"], r["error"], r["fields"]["source"]) for r in answer["rejected"]] == [
        (0, CertificateRevoked.code, "chain"), (1, CertificateRevoked.code, "chain")]
    assert answer["rejected"][0]["fields"]["eth_address"] == world.peers["device"].eth_address
