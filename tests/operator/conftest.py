"""Fixtures for the operator tools: a real anvil with Clearhouse deployed and a whole settlement story on it.

The story is driven straight through web3 (no services) so the audit and reconciliation can be tested against
the contract alone: deposits, three policies with splits, issue, settle, a claim-14 renewal (new serial while
unsettled) and a claim-13 top-up, transfer requests and bank confirmations.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.logs import DISCARD

from offchain.chain import Deployment, deploy, encode_balance_statement, start_anvil
from offchain.core.messages import (
    BalanceStatement,
    Domain,
    ReceiveLog,
    Role,
    UsageBatch,
    UsageLog,
    keccak,
    policy_id,
    sign,
)

ROOT = Path(__file__).resolve().parents[2]
FOREVER = (1 << 40) - 1
EXPIRES = 4_000_000_000


@dataclass
class Actor:
    name: str
    key: bytes
    address: str


@dataclass
class ChainWorld:
    """A deployed contract plus the keys of every party; methods send one contract call each."""

    w3: Web3
    deployment: Deployment
    deployment_path: Path
    actors: dict[str, Actor]
    contract: Any = None
    next_seq: dict[bytes, int] = field(default_factory=dict)
    spent: dict[bytes, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.contract = self.w3.eth.contract(address=self.deployment.address, abi=self.deployment.abi)

    @property
    def domain(self) -> Domain:
        return self.deployment.domain

    def send(self, who: str, fn_name: str, *args: Any) -> dict:
        actor = self.actors[who]
        fn = getattr(self.contract.functions, fn_name)(*args)
        tx = fn.build_transaction({"from": actor.address, "gas": 3_000_000,
                                   "nonce": self.w3.eth.get_transaction_count(actor.address, "pending")})
        signed = Account.from_key(actor.key).sign_transaction(tx)
        receipt = self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_raw_transaction(signed.raw_transaction))
        assert receipt["status"] == 1, f"{fn_name} reverted"
        return receipt

    def use(self, device: str, serial: bytes, uses: list[tuple[bytes, int]], used_at: int = 1_700_000_000
            ) -> UsageBatch:
        """Device-side: usage logs for (policy_id, fee) pairs, packed into one batch (not yet settled)."""
        first = self.next_seq.get(serial, 0)
        logs = [UsageLog(serial=serial, seq=first + i, policy_id=pid, fee=fee, receiver=self.actors["sp"].address,
                         used_at=used_at + i) for i, (pid, fee) in enumerate(uses)]
        self.next_seq[serial] = first + len(logs)
        self.spent[serial] = self.spent.get(serial, 0) + sum(fee for _, fee in uses)
        return UsageBatch.from_logs(logs)

    def settle(self, device: str, batches: list[UsageBatch], received_at: int = 1_700_000_500) -> dict:
        items = []
        for batch in batches:
            device_sig = sign(batch, self.domain, self.actors[device].key)
            receive = ReceiveLog(usage_batch=batch.struct_hash(), payer=self.actors[device].address,
                                 received_at=received_at)
            sp_sig = sign(receive, self.domain, self.actors["sp"].key)
            items.append(((batch.serial, batch.first_seq, batch.receiver, list(batch.policy_ids), batch.entries),
                          device_sig, received_at, sp_sig))
        return self.send("cc", "settle", items)

    def renew(self, device: str, old: bytes, new: bytes, new_money: int) -> dict:
        statement = BalanceStatement(serial=old, next_seq=self.next_seq.get(old, 0), spent=self.spent.get(old, 0),
                                     attested_at=1_700_001_000)
        signature = sign(statement, self.domain, self.actors[device].key)
        return self.send("cc", "renew", old, encode_balance_statement(statement), signature, new, new_money, EXPIRES)


def _fund(w3: Web3, address: str) -> None:
    w3.provider.make_request("anvil_setBalance", [address, hex(10**21)])


def _actors(w3: Web3) -> dict[str, Actor]:
    actors = {}
    for name in ("authority", "cc", "sp", "cp1", "cp2", "bank", "dev1", "dev2"):
        key = secrets.token_bytes(32)
        actors[name] = Actor(name, key, Account.from_key(key).address)
        _fund(w3, actors[name].address)
    return actors


ROLES = {"cc": Role.CLEARING_CENTER, "sp": Role.SERVICE_PROVIDER, "cp1": Role.CONTENT_PROVIDER,
         "cp2": Role.CONTENT_PROVIDER, "bank": Role.BANK, "dev1": Role.DEVICE, "dev2": Role.DEVICE}


def user_hash(user: str) -> bytes:
    return keccak(user.encode())


def run_story(world: ChainWorld) -> None:
    """The full settlement story on chain; facts a test asserts are kept in `world.notes`."""
    a = world.actors
    device_users = {"dev1": user_hash("alice"), "dev2": user_hash("bob")}  # the user each device is registered for
    for name, role in ROLES.items():
        world.send("authority", "registerMember", a[name].address, int(role), keccak(name.encode()), bytes(32),
                   device_users.get(name, bytes(32)), 0, FOREVER)
    world.send("bank", "recordDeposit", keccak(b"dep-1"), user_hash("alice"), 1_000, keccak(b"ref-1"))
    world.send("bank", "recordDeposit", keccak(b"dep-2"), user_hash("bob"), 600, keccak(b"ref-2"))
    contents = {"A": (b"A" * 32, 100, "cp1", 7_000), "B": (b"B" * 32, 250, "cp1", 8_000),
                "C": (b"C" * 32, 75, "cp2", 6_001)}
    pids = {}
    for label, (cid, price, owner, bps) in contents.items():
        payees = [(a[owner].address, bps), (a["sp"].address, 9_000 - bps), (a["cc"].address, 1_000)]
        world.send(owner, "registerPolicy", cid, 1, price, payees, keccak(label.encode()))
        pids[label] = policy_id(cid, 1)
    world.notes.update(pids=pids, contents=contents)
    _issue_use_renew(world, pids)
    receipt = world.send("cc", "requestTransfers", list(pids.values()))
    requests = world.contract.events.TransferRequested().process_receipt(receipt, errors=DISCARD)
    for event in requests[:-1]:  # the last request stays unconfirmed: in flight
        world.send("bank", "confirmTransfer", event["args"]["requestId"], keccak(event["args"]["requestId"]))
    world.notes["unconfirmed_request"] = requests[-1]["args"]["requestId"]


def _issue_use_renew(world: ChainWorld, pids: dict[str, bytes]) -> None:
    s1, s2, s3 = (keccak(label) for label in (b"serial-1", b"serial-2", b"serial-3"))
    world.send("cc", "issue", s1, world.actors["dev1"].address, user_hash("alice"), 500, EXPIRES)
    world.send("cc", "issue", s2, world.actors["dev2"].address, user_hash("bob"), 400, EXPIRES)
    first = world.use("dev1", s1, [(pids["A"], 100), (pids["B"], 250)])
    second = world.use("dev1", s1, [(pids["A"], 100)])  # used offline, not yet settled
    world.settle("dev1", [first])
    world.renew("dev1", s1, s3, 300)  # claim 14: s1 still has an unsettled batch -> new serial
    world.settle("dev1", [second])  # the old log's remaining batch still settles
    world.settle("dev1", [world.use("dev1", s3, [(pids["C"], 75)])])
    world.settle("dev2", [world.use("dev2", s2, [(pids["C"], 75), (pids["A"], 100)])])
    world.renew("dev2", s2, s2, 100)  # claim 13: all settled -> top-up in place
    world.settle("dev2", [world.use("dev2", s2, [(pids["B"], 250)])])
    world.notes.update(serials={"s1": s1, "s2": s2, "s3": s3})


@pytest.fixture(scope="session")
def anvil():
    with start_anvil(hardfork="paris") as node:
        yield node


@pytest.fixture(scope="session")
def world(anvil, tmp_path_factory) -> ChainWorld:
    w3 = anvil.web3()
    actors = _actors(w3)
    deployment = deploy(w3, actors["authority"].key, actors["authority"].address, root=ROOT)
    path = deployment.write(tmp_path_factory.mktemp("deploy") / "local.json")
    world = ChainWorld(w3=w3, deployment=deployment, deployment_path=path, actors=actors)
    run_story(world)
    return world


os.environ.setdefault("CLEARHOUSE_ROOT", str(ROOT))
