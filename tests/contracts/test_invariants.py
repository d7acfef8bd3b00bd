"""Stateful test of Clearhouse on anvil against an independent model of the money.

The machine deposits, registers policies, issues logs, settles one- and several-policy batches (and the tails
of closed logs), renews in place and onto a new serial, requests transfers and confirms them; a `fault` rule
drives one invalid call at a time, and the model predicts its exact custom error and arguments. After every
step the whole chain is compared with the model: fees settled and requested per policy, cap / spent /
sequence / limit per serial, deposited and allocated per user (also as the sum of the user's caps: issued plus
renewal new money, net of carried balances), and every transfer request and confirmation per payee. At the end
of each example the reconciliation code (`chain_facts` + `compare_*`) recomputes fees from the settle calldata
and the allocations from the events as a second, independent check. Outcomes are labelled with `event()` (`outcome()`):
`pytest --hypothesis-show-statistics` prints them.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from eth_utils import keccak
from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from chainkit import FastClient, PristineChain, RawRpc, ViewReader, World
from offchain.core.errors import ContractReverted

OPEN = 2**48 - 1  # IssueLogs.OPEN: the seqLimit of an open log
DEVICE_USERS = {"device": keccak(text="alice"), "device2": keccak(text="bob")}  # tests/conftest.py
USERS = tuple(DEVICE_USERS.values())
PAYEE_NAMES = ("content_provider", "payee2", "provider")
EXPIRES_IN_S = 10 * 86_400
MAX_LOGS = 10  # bounds the per-step comparison; later issues and renewals are skipped
MAX_POLICIES = 5
MAX_BATCH = 6
RECONCILE_EVERY = int(os.environ.get("CLEARHOUSE_RECONCILE_EVERY", "1"))


# --- the model -------------------------------------------------------------------------------------------------
def split_parts(amount: int, bps: list[int]) -> list[int]:
    """Cumulative parts of a policy's total, from the rule in Split.sol's NatSpec (not from its code): a chain of
    two-way splits, payee k > 0 gets floor(rest * bps_k / bps_left), payee 0 the final rest."""
    shares = [0] * len(bps)
    rest, bps_left = amount, 10_000
    for k in range(1, len(bps)):
        shares[k] = rest * bps[k] // bps_left
        rest -= shares[k]
        bps_left -= bps[k]
    shares[0] = rest
    return shares


def payee_dues(settled: int, requested: int, bps: list[int]) -> list[int]:
    """What a request owes each payee: its part of the settled total minus its part of the requested total."""
    return [now - before for now, before in zip(split_parts(settled, bps), split_parts(requested, bps))]


@dataclass
class LogModel:
    device: str
    user: bytes
    cap: int
    expires_at: int
    spent: int = 0
    next_seq: int = 0
    seq_limit: int = OPEN
    tail: tuple[bytes, int] | None = None  # attested, unsettled usage of a closed log: (policy, count)

    @property
    def closed(self) -> bool:
        return self.seq_limit != OPEN


@dataclass
class PolicyModel:
    price: int
    payees: list[tuple[str, int]]
    settled: int = 0
    requested: int = 0


@dataclass
class RequestModel:
    payee: str
    amount: int
    confirmed: bool = False
    bank_ref: bytes = bytes(32)


def reverted_with(exc: ContractReverted, name: str, **expected: object) -> None:
    """Assert the revert is `name` with exactly these arguments (bytes and addresses compared canonically)."""
    def canon(value: object) -> object:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
            return value.lower()
        return value

    assert exc.error_name == name, f"expected {name}{expected}, got {exc.error_name}: {exc.message}"
    got = {k: canon(v) for k, v in exc.error_args.items()}
    assert got == {k: canon(v) for k, v in expected.items()}, f"{name}: {got} != {expected}"


_EXAMPLES = [0]
_OUTCOMES: Counter[str] = Counter()


def outcome(label: str) -> None:
    """`hypothesis.event(label)` (the share of examples that reached it, in --hypothesis-show-statistics) and a
    count of how often it happened, written to CLEARHOUSE_HYPOTHESIS_OUTCOMES (JSON) when the test ends."""
    event(label)
    _OUTCOMES[label] += 1


def _report_progress() -> None:
    """Long (deep) runs print nothing until they end: with CLEARHOUSE_HYPOTHESIS_PROGRESS=FILE each finished
    example appends a line, so an operator can see how far a run got."""
    _EXAMPLES[0] += 1
    path = os.environ.get("CLEARHOUSE_HYPOTHESIS_PROGRESS")
    if path:
        with open(path, "a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} example {_EXAMPLES[0]}\n")


class ClearhouseMachine(RuleBasedStateMachine):
    """Bound to the session chain by `TestClearhouseInvariants._bind` (pytest fixtures) before it runs."""

    new_env = None  # a PristineChain (chainkit.py): the chain right after a Clearhouse was deployed

    # -- set-up ---------------------------------------------------------------------------------------------
    @initialize()
    def setup(self) -> None:
        # The chain reverted to the snapshot taken right after the deployment, with new clients: no nonce, sent
        # transaction or receipt of an earlier example is remembered; a deposit left over would fail below.
        self.env = env = type(self).new_env()
        self.world = World(env)
        self.views = ViewReader(env.rpc.url, env.deployment.address, env.deployment.abi)
        users = self.views.read([("deviceUser", (self.world.addr(d),)) for d in DEVICE_USERS]
                                + [("userFunds", (u,)) for u in USERS])
        for (device, user), (on_chain,) in zip(DEVICE_USERS.items(), users):
            assert bytes(on_chain) == user, device  # the copy above must match the deployment's registrations
        assert users[len(DEVICE_USERS):] == [(0, 0)] * len(USERS), "an earlier example's deposits are on chain"
        self.logs: dict[bytes, LogModel] = {}
        self.policies: dict[bytes, PolicyModel] = {}
        self.requests: dict[bytes, RequestModel] = {}
        self.deposited = {u: 0 for u in USERS}
        self.allocated = {u: 0 for u in USERS}
        self.requested_by_payee: dict[str, int] = {}
        self.confirmed_by_payee: dict[str, int] = {}
        self.counter = 0
        self.steps = 0
        self._new_policy(37, [(self.world.addr("content_provider"), 7000), (self.world.addr("payee2"), 3000)])
        self._new_policy(23, [(self.world.addr("payee2"), 10_000)])
        # three payees: the only split where a later payee's part depends on the bps left (Split.parts)
        self._new_policy(41, [(self.world.addr(n), b) for n, b in zip(PAYEE_NAMES, (5_000, 2_000, 3_000))])
        self._issue("device", 1_500, funded=True)

    def teardown(self) -> None:
        # every example in CI; a deterministic share of examples (by content) in a deep run, where reading the
        # whole history back through the audit index would otherwise take most of the time
        if hasattr(self, "world") and self.counter % RECONCILE_EVERY == 0:
            self._reconcile()
        if hasattr(self, "world"):
            outcome(f"steps per example: {10 * (self.steps // 10)}-{10 * (self.steps // 10) + 9}")
        _report_progress()

    def _next(self, label: str) -> bytes:
        self.counter += 1
        return keccak(text=f"{label}-{self.counter}")

    def _available(self, user: bytes) -> int:
        return self.deposited[user] - self.allocated[user]

    def _deposit(self, user: bytes, amount: int) -> None:
        self.world.fund(user, amount, deposit_id=self._next("deposit"))
        self.deposited[user] += amount

    def _fund_shortfall(self, user: bytes, wanted: int) -> None:
        """Issue logs fund themselves: the bank records what the user lacks before the CC allocates it."""
        if wanted > self._available(user):
            self._deposit(user, wanted - self._available(user))

    def _new_policy(self, price: int, payees: list[tuple[str, int]]) -> bytes:
        pid = self.world.policy(price=price, payees=payees)
        self.policies[pid] = PolicyModel(price, payees)
        return pid

    def _issue(self, device: str, cap: int, funded: bool) -> bytes:
        user = DEVICE_USERS[device]
        if funded:
            self._fund_shortfall(user, cap)
        serial = self._next("serial")
        self.world.issue(serial, cap, user=user, device=device, fund=False, expires_in=EXPIRES_IN_S)
        self.allocated[user] += cap
        self.logs[serial] = LogModel(device, user, cap, self.world.now + EXPIRES_IN_S)
        return serial

    # -- valid continuations --------------------------------------------------------------------------------
    @rule(user=st.sampled_from(USERS), amount=st.integers(1, 5_000))
    def deposit(self, user: bytes, amount: int) -> None:
        self._deposit(user, amount)
        outcome("deposit")

    @rule(price=st.integers(1, 400), shape=st.sampled_from(["one payee", "two payees", "three payees"]),
          data=st.data())
    def register_policy(self, price: int, shape: str, data: st.DataObject) -> None:
        if len(self.policies) >= MAX_POLICIES:  # enough policies: a valid continuation instead
            self._settle_any(data)
            return
        names = PAYEE_NAMES[: {"one payee": 1, "two payees": 2, "three payees": 3}[shape]]
        cuts = sorted(data.draw(st.lists(st.integers(1, 9_999), min_size=len(names) - 1,
                                         max_size=len(names) - 1, unique=True)))
        bps = [b - a for a, b in zip([0, *cuts], [*cuts, 10_000])]
        self._new_policy(price, [(self.world.addr(n), b) for n, b in zip(names, bps)])
        outcome(f"register policy: {shape}")

    @rule(device=st.sampled_from(sorted(DEVICE_USERS)), cap=st.integers(1, 3_000), data=st.data())
    def issue(self, device: str, cap: int, data: st.DataObject) -> None:
        if len(self.logs) >= MAX_LOGS:  # enough logs: a valid continuation instead
            self._settle_any(data)
            return
        self._issue(device, cap, funded=True)
        outcome("issue: funded")

    def _settleable(self, closed: bool) -> list[bytes]:
        cheapest = min(p.price for p in self.policies.values())
        return [s for s, log in self.logs.items()
                if log.closed == closed and log.next_seq < log.seq_limit and log.cap - log.spent >= cheapest
                and (not closed or log.tail is not None)]

    # Three rules draw a settlement (and one `fault` rule draws one fault of any kind), so that valid settlements
    # dominate the run; every rule is always enabled (no filter to retry, no invalid examples), and each picks
    # among the continuations the model says are possible.
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        self._settle_any(data)

    @rule(data=st.data())
    def settle_again(self, data: st.DataObject) -> None:
        self._settle_any(data)

    @rule(data=st.data())
    def settle_once_more(self, data: st.DataObject) -> None:
        self._settle_any(data)

    def _settle_any(self, data: st.DataObject) -> None:
        kinds = []
        if self._settleable(closed=False):
            kinds += ["one policy", "one policy", "several policies"]
        if self._settleable(closed=True):
            kinds += ["closed-log tail", "closed-log tail"]
        if not kinds:
            device = data.draw(st.sampled_from(sorted(DEVICE_USERS)))
            if len(self.logs) < MAX_LOGS:
                self._issue(device, data.draw(st.integers(500, 3_000)), funded=True)
                outcome("settle: no log with room, issued one")
            return
        kind = data.draw(st.sampled_from(kinds))
        {"one policy": self._settle_one_policy, "several policies": self._settle_several_policies,
         "closed-log tail": self._settle_closed_tail}[kind](data)

    def _settle_one_policy(self, data: st.DataObject) -> None:
        serial = data.draw(st.sampled_from(self._settleable(closed=False)))
        log = self.logs[serial]
        pid = data.draw(st.sampled_from([p for p, m in self.policies.items() if m.price <= log.cap - log.spent]))
        fits = (log.cap - log.spent) // self.policies[pid].price
        count = data.draw(st.integers(1, min(MAX_BATCH, fits)))
        self._settle_valid(serial, [pid], [0] * count)
        outcome("settle one policy: ok (fast path)")

    def _settle_several_policies(self, data: st.DataObject) -> None:
        serial = data.draw(st.sampled_from(self._settleable(closed=False)))
        log = self.logs[serial]
        fitting = sorted(p for p, m in self.policies.items() if m.price <= log.cap - log.spent)
        if len(fitting) < 2:
            outcome("settle several policies: skipped (fewer than two policies fit the cap)")
            return
        pids = data.draw(st.lists(st.sampled_from(fitting), min_size=2, max_size=3, unique=True))
        indices = data.draw(st.lists(st.integers(0, len(pids) - 1), min_size=1, max_size=MAX_BATCH))
        prices = [self.policies[p].price for p in pids]
        indices[0] = prices.index(min(prices))  # the first entry is the cheapest, so one entry always fits
        while sum(prices[i] for i in indices) > log.cap - log.spent:
            indices.pop()
        self._settle_valid(serial, pids, indices)
        outcome("settle several policies: ok (general path)")

    def _settle_closed_tail(self, data: st.DataObject) -> None:
        serial = data.draw(st.sampled_from(self._settleable(closed=True)))
        pid, count = self.logs[serial].tail
        self._settle_valid(serial, [pid], [0] * count)
        self.logs[serial].tail = None
        outcome("settle closed-log tail: ok")

    def _settle_valid(self, serial: bytes, pids: list[bytes], indices: list[int]) -> None:
        log = self.logs[serial]
        prices = [self.policies[p].price for p in pids]
        entries = [(i, prices[i], self.world.now) for i in indices]
        batch = self.world.batch(serial, pids, entries, first_seq=log.next_seq)
        self.world.settle(self.world.item(batch, device=log.device))
        for i in indices:
            self.policies[pids[i]].settled += prices[i]
        log.spent += sum(prices[i] for i in indices)
        log.next_seq += len(indices)
        outcome(f"settled entries: {len(indices)}")

    def _renewable(self, *, all_settled: bool) -> list[bytes]:
        return [s for s, log in self.logs.items() if not log.closed and (not all_settled or log.tail is None)]

    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        kinds = []
        if self._renewable(all_settled=True):
            kinds.append("top-up")
        if self._renewable(all_settled=False) and len(self.logs) < MAX_LOGS:
            kinds += ["new serial", "new serial with unsettled usage", "new serial with unsettled usage"]
        if not kinds:  # no open log, or enough logs: a valid continuation instead
            self._settle_any(data)
            return
        new_money = data.draw(st.integers(0, 2_000))
        kind = data.draw(st.sampled_from(kinds))
        if kind == "top-up":
            self._renew_top_up(data, new_money)
        else:
            self._renew_new_serial(data, new_money, data.draw(st.integers(1, 3)) if "unsettled" in kind else 0)

    def _renew_top_up(self, data: st.DataObject, new_money: int) -> None:
        serial = data.draw(st.sampled_from(self._renewable(all_settled=True)))
        log = self.logs[serial]
        self._fund_shortfall(log.user, new_money)
        statement, signature = self.world.statement(serial, log.next_seq, log.spent, device=log.device)
        expires_at = self.world.now + 86_400 + self.counter
        self.world.c("clearing_center").renew(serial, statement, signature, serial, new_money, expires_at)
        log.cap += new_money
        log.expires_at = expires_at
        self.allocated[log.user] += new_money
        outcome("renew: top-up in place")

    def _renew_new_serial(self, data: st.DataObject, new_money: int, unsettled: int) -> None:
        serial = data.draw(st.sampled_from(self._renewable(all_settled=False)))
        log = self.logs[serial]
        pid = data.draw(st.sampled_from(sorted(self.policies)))
        unsettled = min(unsettled, (log.cap - log.spent) // self.policies[pid].price)
        attested_spent = log.spent + unsettled * self.policies[pid].price
        attested_seq = log.next_seq + unsettled
        self._fund_shortfall(log.user, new_money)
        statement, signature = self.world.statement(serial, attested_seq, attested_spent, device=log.device)
        new_serial = self._next("serial")
        expires_at = self.world.now + 86_400 + self.counter
        self.world.c("clearing_center").renew(serial, statement, signature, new_serial, new_money, expires_at)
        carried = log.cap - attested_spent
        self.logs[new_serial] = LogModel(log.device, log.user, carried + new_money, expires_at)
        log.cap, log.seq_limit = attested_spent, attested_seq
        log.tail = (pid, unsettled) if unsettled else None
        self.allocated[log.user] += new_money
        outcome("renew: new serial" + (" with unsettled usage" if unsettled else " (all settled)"))

    def _accrued(self) -> list[bytes]:
        return [p for p, m in self.policies.items() if m.settled > m.requested]

    @rule(data=st.data())
    def payout(self, data: st.DataObject) -> None:
        kinds = (["request"] if self._accrued() else []) + (["confirm", "confirm"] if self._unconfirmed() else [])
        if not kinds:  # nothing due: a valid continuation instead
            self._settle_any(data)
            return
        if data.draw(st.sampled_from(kinds)) == "request":
            self._request_transfers(data)
        else:
            self._confirm_transfer(data)

    def _request_transfers(self, data: st.DataObject) -> None:
        accrued = self._accrued()
        pids = data.draw(st.lists(st.sampled_from(sorted(self.policies)), max_size=3, unique=True))
        if not set(pids) & set(accrued):
            pids.append(data.draw(st.sampled_from(accrued)))
        expected: dict[str, int] = {}  # payee -> amount, in first-seen order
        for pid in pids:
            model = self.policies[pid]
            dues = payee_dues(model.settled, model.requested, [b for _, b in model.payees])
            model.requested = model.settled
            for (payee, _), share in zip(model.payees, dues):
                if share:
                    expected[payee] = expected.get(payee, 0) + share
        _, ids = self.world.c("clearing_center").request_transfers(pids)
        assert len(ids) == len(expected), f"{len(ids)} requests for {len(expected)} payees with a share"
        for rid, (payee, amount) in zip(ids, expected.items()):
            assert rid not in self.requests, "a request id was reused"
            self.requests[rid] = RequestModel(payee, amount)
            self.requested_by_payee[payee] = self.requested_by_payee.get(payee, 0) + amount
        outcome(f"request transfers: {len(ids)} payee(s)")

    def _unconfirmed(self) -> list[bytes]:
        return [r for r, m in self.requests.items() if not m.confirmed]

    def _confirm_transfer(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self._unconfirmed()))
        bank_ref = self._next("wire")
        self.world.c("bank").confirm_transfer(rid, bank_ref)
        request = self.requests[rid]
        request.confirmed, request.bank_ref = True, bank_ref
        self.confirmed_by_payee[request.payee] = self.confirmed_by_payee.get(request.payee, 0) + request.amount
        outcome("confirm transfer: ok")

    # -- one fault at a time: the model predicts the exact error and nothing changes ------------------------
    @rule(data=st.data(), settlement=st.booleans())
    def fault(self, data: st.DataObject, settlement: bool) -> None:
        """One invalid call: a settlement half of the time, else an issue, renewal, request or confirmation."""
        if settlement:
            self._settle_fault(data)
        else:
            self._other_fault(data)

    def _settle_fault(self, data: st.DataObject) -> None:
        serial = data.draw(st.sampled_from(sorted(self.logs)))
        log = self.logs[serial]
        pid = data.draw(st.sampled_from(sorted(self.policies)))
        price = self.policies[pid].price
        kinds = ["fee", "gap", "expiry", "signer", "cap"]
        if log.next_seq > 0:
            kinds += ["replay"] * 4
        if log.closed:
            kinds.append("beyond closed log")
        kind = data.draw(st.sampled_from(kinds))
        first, fee, used_at, count, device = log.next_seq, price, self.world.now, 1, log.device
        if kind == "fee":
            fee = price + data.draw(st.sampled_from([-1, 1])) if price > 1 else price + 1
        elif kind == "gap":
            first = log.next_seq + data.draw(st.integers(1, 3))
        elif kind == "replay":
            first = data.draw(st.integers(0, log.next_seq - 1))
        elif kind == "expiry":
            used_at = log.expires_at + 1
        elif kind == "signer":
            device = "device2" if log.device == "device" else "device"
        elif kind == "cap":
            count = (log.cap - log.spent) // price + 1
        elif kind == "beyond closed log":
            count = log.seq_limit - log.next_seq + 1
        if count > 4_000 or (kind == "cap" and log.next_seq + count > log.seq_limit):
            outcome("settle fault: skipped (no such fault here)")
            return
        item = self.world.item(self.world.batch(serial, [pid], [(0, fee, used_at)] * count, first_seq=first),
                               device=device)
        try:
            self.world.c("clearing_center").settle([item])
        except ContractReverted as exc:
            reverted = exc
        else:
            raise AssertionError(f"settle fault {kind!r} on {serial.hex()[:8]} ({log}) settled")
        expected = {
            "fee": ("FeeMismatch", {"policyId": pid, "expected": price, "got": fee}),
            "gap": ("SequenceGap", {"serial": serial, "expected": log.next_seq, "got": first}),
            "replay": ("BatchReplayed", {"serial": serial, "firstSeq": first, "nextSeq": log.next_seq}),
            "expiry": ("UsageAfterExpiry", {"serial": serial, "usedAt": used_at, "expiresAt": log.expires_at}),
            "signer": ("SignerMismatch", {"expected": self.world.addr(log.device), "got": self.world.addr(device)}),
            "cap": ("CapExceeded", {"serial": serial, "cap": log.cap, "wanted": log.spent + count * price}),
            "beyond closed log": ("SequenceBeyondClosedLog", {"serial": serial, "seqLimit": log.seq_limit,
                                                              "wanted": log.next_seq + count}),
        }[kind]
        reverted_with(reverted, expected[0], **expected[1])
        outcome(f"settle fault: {expected[0]}")

    def _other_fault(self, data: st.DataObject) -> None:
        kinds = ["issue underfunded", "request nothing", "confirm unknown"]
        if self.requests and not self._unconfirmed():
            kinds.append("confirm twice")
        elif any(m.confirmed for m in self.requests.values()):
            kinds.append("confirm twice")
        open_logs = [s for s, log in self.logs.items() if not log.closed]
        if open_logs:
            kinds += ["renew over cap", "reuse while unsettled"]
        if any(self.logs[s].spent for s in open_logs):
            kinds.append("renew below settled")
        if any(log.closed for log in self.logs.values()):
            kinds.append("renew closed log")
        kind = data.draw(st.sampled_from(kinds))
        try:
            self._fault(kind, data, self.world.c("clearing_center"))
        except ContractReverted as exc:
            name, args = exc.expected  # type: ignore[attr-defined]
            reverted_with(exc, name, **args)
            outcome(f"fault: {name}")

    def _fault(self, kind: str, data: st.DataObject, cc) -> None:  # noqa: ANN001 - ClearhouseChain
        """Makes the call of `kind` that must revert; the ContractReverted carries the model's prediction."""
        expected: tuple[str, dict]
        if kind == "issue underfunded":
            device = data.draw(st.sampled_from(sorted(DEVICE_USERS)))
            user = DEVICE_USERS[device]
            cap = self._available(user) + data.draw(st.integers(1, 1_000))
            expected = ("InsufficientDeposits", {"userIdHash": user, "available": self._available(user),
                                                 "wanted": cap})
            self._raise_with(expected, cc.issue, self._next("serial"), self.world.addr(device), user, cap,
                             self.world.now + EXPIRES_IN_S)
        if kind == "request nothing":
            idle = [p for p in self.policies if p not in self._accrued()]
            if not idle:
                idle = [self._new_policy(11, [(self.world.addr("content_provider"), 10_000)])]
            self._raise_with(("NothingToRequest", {}), cc.request_transfers, idle)
        if kind == "confirm unknown":
            rid = self._next("no-such-request")
            self._raise_with(("UnknownTransferRequest", {"requestId": rid}), self.world.c("bank").confirm_transfer,
                             rid, self._next("wire"))
        if kind == "confirm twice":
            rid = data.draw(st.sampled_from([r for r, m in self.requests.items() if m.confirmed]))
            self._raise_with(("TransferAlreadyConfirmed", {"requestId": rid, "bankRef": self.requests[rid].bank_ref}),
                             self.world.c("bank").confirm_transfer, rid, self._next("wire"))
        if kind == "renew closed log":
            serial = data.draw(st.sampled_from([s for s, m in self.logs.items() if m.closed]))
            log = self.logs[serial]
            expected = ("IssueLogClosed", {"serial": serial})
            spent, seq, new = log.cap, log.seq_limit, self._next("serial")
        elif kind == "renew over cap":
            serial = data.draw(st.sampled_from([s for s, m in self.logs.items() if not m.closed]))
            log = self.logs[serial]
            spent, seq, new = log.cap + data.draw(st.integers(1, 100)), log.next_seq, self._next("serial")
            expected = ("AttestationOverCap", {"serial": serial, "cap": log.cap, "attestedSpent": spent})
        elif kind == "renew below settled":
            serial = data.draw(st.sampled_from([s for s, m in self.logs.items() if not m.closed and m.spent]))
            log = self.logs[serial]
            spent, seq, new = log.spent - 1, log.next_seq, self._next("serial")
            expected = ("AttestationBelowSettled", {"serial": serial, "settledSpent": log.spent,
                                                    "attestedSpent": spent})
        else:  # reuse while unsettled
            serial = data.draw(st.sampled_from([s for s, m in self.logs.items() if not m.closed]))
            log = self.logs[serial]
            spent, seq, new = log.spent, log.next_seq + 1, serial
            expected = ("SerialReuseWhileUnsettled", {"serial": serial, "settledSeq": log.next_seq,
                                                      "attestedSeq": seq})
        statement, signature = self.world.statement(serial, seq, spent, device=log.device)
        self._raise_with(expected, cc.renew, serial, statement, signature, new, 0, self.world.now + 86_400)

    @staticmethod
    def _raise_with(expected: tuple[str, dict], call, *args) -> None:  # noqa: ANN001
        """Make the call, which must revert; the ContractReverted leaves with the prediction attached."""
        try:
            call(*args)
        except ContractReverted as exc:
            exc.expected = expected  # type: ignore[attr-defined]
            raise
        raise AssertionError(f"{call.__name__}{args[:1]} succeeded; expected {expected[0]}")

    # -- the chain against the model, after every step ------------------------------------------------------
    @invariant()
    def chain_matches_model(self) -> None:
        self.steps += 1
        policies, logs, requests = list(self.policies), list(self.logs), list(self.requests)
        calls = ([("policy", (p,)) for p in policies] + [("issueLog", (s,)) for s in logs]
                 + [("userFunds", (u,)) for u in USERS] + [("transferRequest", (r,)) for r in requests])
        answers = iter(self.views.read(calls))
        for pid in policies:
            view, model = next(answers), self.policies[pid]
            assert (view[5], view[6]) == (model.settled, model.requested), \
                f"policy {pid.hex()[:8]}: settled/requested {view[5], view[6]}, model {model.settled, model.requested}"
        caps = {u: 0 for u in USERS}
        for serial in logs:
            device, user, cap, spent, next_seq, seq_limit, expires_at, closed = next(answers)
            model = self.logs[serial]
            got = (device.lower(), bytes(user), cap, spent, next_seq, seq_limit, expires_at, closed)
            want = (self.world.addr(model.device).lower(), model.user, model.cap, model.spent, model.next_seq,
                    model.seq_limit, model.expires_at, model.closed)
            assert got == want, f"log {serial.hex()[:8]}: chain {got[2:]}, model {want[2:]}"
            assert spent <= cap
            caps[model.user] += cap
        for user in USERS:
            deposited, allocated = next(answers)
            assert (deposited, allocated) == (self.deposited[user], self.allocated[user]), \
                f"user funds {deposited, allocated}, model {self.deposited[user], self.allocated[user]}"
            # caps net of carried balances sum to the new money ever allocated, and never beyond deposits
            assert caps[user] == self.allocated[user] <= self.deposited[user], (caps[user], self.allocated[user])
        requested: dict[str, int] = {}
        confirmed: dict[str, int] = {}
        for rid in requests:
            payee, amount, is_confirmed, bank_ref = next(answers)
            model = self.requests[rid]
            assert (payee.lower(), amount, is_confirmed, bytes(bank_ref)) == \
                (model.payee.lower(), model.amount, model.confirmed, model.bank_ref), f"request {rid.hex()[:8]}"
            requested[payee.lower()] = requested.get(payee.lower(), 0) + amount
            if is_confirmed:
                confirmed[payee.lower()] = confirmed.get(payee.lower(), 0) + amount
        assert requested == {p.lower(): a for p, a in self.requested_by_payee.items()}
        assert confirmed == {p.lower(): a for p, a in self.confirmed_by_payee.items()}

    # -- the reconciliation code as a second, independent check (once per example) ---------------------------
    def _reconcile(self) -> None:
        from offchain.operator import reconcile
        from offchain.operator.audit.index import AuditIndex, ContractRef

        dep = self.env.deployment
        ref = ContractRef(chain_id=dep.chain_id, address=dep.address, abi=tuple(dep.abi),
                          deploy_block=dep.deploy_block)
        with AuditIndex(self.env.w3, ref, Path(":memory:")) as index:
            index.sync()
            facts = reconcile.chain_facts(index)
        differences = (reconcile.compare_caps(facts, None) + reconcile.compare_settlement(facts, None)
                       + reconcile.compare_requests(facts, None) + reconcile.compare_transfers(facts, None))
        unexplained = [d for d in differences if not d.in_flight]
        assert not unexplained, [d.cause for d in unexplained]
        fees = {"0x" + p.hex(): m.settled for p, m in self.policies.items() if m.settled}
        assert facts.settled_by_policy == fees, "fees recomputed from the settle calldata differ from the model"
        issued = {"0x" + u.hex(): a for u, a in self.allocated.items() if a}
        assert facts.allocated == issued, "new money from the events differs from the model"
        if any(m.settled for m in self.policies.values()):
            outcome("example settled usage")
        note(f"steps: {self.steps}")


@pytest.mark.stateful
class TestClearhouseInvariants(ClearhouseMachine.TestCase):
    """Run as a Hypothesis TestCase so `--hypothesis-show-statistics` reports the machine's events."""

    @pytest.fixture(autouse=True)
    def _bind(self, fresh_chain_env):  # noqa: ANN001 - tests/conftest.py
        # one deployment the conftest way; each example starts from the chain right after it (chainkit.py)
        ClearhouseMachine.new_env = staticmethod(PristineChain(fresh_chain_env()))
        _OUTCOMES.clear()
        yield
        path = os.environ.get("CLEARHOUSE_HYPOTHESIS_OUTCOMES")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(dict(sorted(_OUTCOMES.items())), indent=2) + "\n")


def test_fast_client_reverts_and_writes_like_the_client(chain_env) -> None:  # noqa: ANN001 - tests/conftest.py
    """The machine's fast path (chainkit.FastClient: fixed gas, the revert replayed at the parent block) raises
    the same named error with the same arguments as ClearhouseChain (which decodes it from eth_estimateGas), and
    what it writes is on chain: the positive control after the refusal."""
    rpc = RawRpc(str(chain_env.w3.provider.endpoint_uri))
    fast = {name: FastClient(chain_env.w3, chain_env.deployment, chain_env.actors[name].key, rpc)
            for name in ("clearing_center", "bank")}
    slow = chain_env.client("clearing_center")
    user, device = DEVICE_USERS["device"], chain_env.actors["device"].address
    serial, expires_at = keccak(text="fast-client-serial"), chain_env.timestamp() + 86_400
    funds = slow.user_funds(user)
    cap = funds.deposited - funds.allocated + 7
    refusals = []
    for client in (slow, fast["clearing_center"]):
        with pytest.raises(ContractReverted) as info:
            client.issue(serial, device, user, cap, expires_at)
        refusals.append((info.value.error_name, info.value.error_args))
    assert refusals[0] == ("InsufficientDeposits", {"userIdHash": user, "available": cap - 7, "wanted": cap})
    assert refusals[1] == refusals[0]
    receipt = fast["bank"].record_deposit(keccak(text="fast-client-deposit"), user, 7, keccak(text="ref"))
    assert int(receipt["status"], 16) == 1
    fast["clearing_center"].issue(serial, device, user, cap, expires_at)
    log = slow.issue_log(serial)
    assert (log.device, log.user_id_hash, log.cap, log.expires_at) == (device, user, cap, expires_at)
