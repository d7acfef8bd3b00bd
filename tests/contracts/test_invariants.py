"""Stateful invariants of Clearhouse on anvil: random deposits, issues, renewals, (invalid) batches, policies,
transfer requests and confirmations, with the chain reverted to the post-deployment snapshot per example.

Checked after every step: settled = accrued + requested per policy; each (serial, seq) settles at most once;
spent <= cap per serial; allocated (caps net of carried) <= confirmed deposits per user; split parts sum to amount.
"""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from chainkit import World
from offchain.core.errors import ContractReverted

USERS = [keccak(text="user-1"), keccak(text="user-2")]
DEVICE_OF = {USERS[0]: "device", USERS[1]: "device2"}  # each device is registered for one user (tests/conftest.py)


_EXAMPLES = [0]


def _report_progress() -> None:
    """Long (deep) runs print nothing until they end: with CLEARHOUSE_HYPOTHESIS_PROGRESS=FILE each finished
    example appends a line, so an operator can see how far a run got."""
    import os
    import time

    _EXAMPLES[0] += 1
    path = os.environ.get("CLEARHOUSE_HYPOTHESIS_PROGRESS")
    if path:
        with open(path, "a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} example {_EXAMPLES[0]}\n")


@pytest.mark.stateful
def test_clearhouse_invariants(chain_env, w3, _base_snapshot, revert_chain) -> None:
    revert_to = revert_chain

    class Machine(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            revert_to(w3, _base_snapshot)
            for client in list(chain_env._clients.values()):
                client._nonce = None
            self.world = World(chain_env)
            self.policies: list[bytes] = [self.world.policy(price=37)]
            self.serials: list[bytes] = []
            self.device_of: dict[bytes, str] = {}
            self.settled_seqs: dict[bytes, set[int]] = {}
            self.deposited = {u: 0 for u in USERS}
            self.counter = 0

        def teardown(self) -> None:
            _report_progress()

        def _next(self, label: str) -> bytes:
            self.counter += 1
            return keccak(text=f"{label}-{self.counter}")

        @rule(user=st.sampled_from(USERS), amount=st.integers(1, 5_000))
        def deposit(self, user: bytes, amount: int) -> None:
            self.world.fund(user, amount, deposit_id=self._next("deposit"))
            self.deposited[user] += amount

        @rule(price=st.integers(1, 500), bps=st.integers(1, 9_999))
        def register_policy(self, price: int, bps: int) -> None:
            payees = [(self.world.addr("content_provider"), bps), (self.world.addr("payee2"), 10_000 - bps)]
            self.policies.append(self.world.policy(price=price, payees=payees))

        @rule(user=st.sampled_from(USERS), cap=st.integers(1, 3_000))
        def issue(self, user: bytes, cap: int) -> None:
            serial = self._next("serial")
            try:
                self.world.issue(serial, cap, user=user, device=DEVICE_OF[user], fund=False)
            except ContractReverted as exc:
                assert exc.error_name == "InsufficientDeposits"
                return
            self.serials.append(serial)
            self.device_of[serial] = DEVICE_OF[user]
            self.settled_seqs[serial] = set()

        @precondition(lambda self: self.serials)
        @rule(data=st.data(), count=st.integers(1, 5), shift=st.integers(-2, 2), wrong_fee=st.booleans())
        def settle(self, data, count: int, shift: int, wrong_fee: bool) -> None:
            serial = data.draw(st.sampled_from(self.serials))
            pid = data.draw(st.sampled_from(self.policies))
            price = self.world.c("bank").policy(pid).price + (1 if wrong_fee else 0)
            first = max(0, self.world.c("bank").issue_log(serial).next_seq + shift)
            item = self.world.item(self.world.batch(serial, [pid], [(0, price, self.world.now)] * count,
                                                    first_seq=first), device=self.device_of[serial])
            try:
                self.world.settle(item)
            except ContractReverted as exc:
                assert exc.error_name in {"FeeMismatch", "BatchReplayed", "SequenceGap", "CapExceeded",
                                          "SequenceBeyondClosedLog"}, exc.message
                return
            seqs = set(range(first, first + count))
            assert not seqs & self.settled_seqs[serial], "a (serial, seq) settled twice"
            self.settled_seqs[serial] |= seqs

        @precondition(lambda self: self.serials)
        @rule(data=st.data(), extra=st.integers(0, 3), new_money=st.integers(0, 2_000), same=st.booleans())
        def renew(self, data, extra: int, new_money: int, same: bool) -> None:
            serial = data.draw(st.sampled_from(self.serials))
            log = self.world.c("bank").issue_log(serial)
            spent = min(log.cap, log.spent + extra * 10)
            statement, sig = self.world.statement(serial, log.next_seq + extra, spent, device=self.device_of[serial])
            new_serial = serial if same else self._next("serial")
            try:
                self.world.c("clearing_center").renew(serial, statement, sig, new_serial, new_money,
                                                      self.world.now + 86_400)
            except ContractReverted as exc:
                assert exc.error_name in {"InsufficientDeposits", "IssueLogClosed", "SerialReuseWhileUnsettled"}
                return
            if new_serial != serial:
                self.serials.append(new_serial)
                self.device_of[new_serial] = self.device_of[serial]
                self.settled_seqs[new_serial] = set()

        @rule(data=st.data())
        def request_and_confirm(self, data) -> None:
            pids = data.draw(st.lists(st.sampled_from(self.policies), min_size=1, max_size=3, unique=True))
            before = {p: self.world.c("bank").policy(p).accrued for p in pids}
            try:
                _, ids = self.world.c("clearing_center").request_transfers(pids)
            except ContractReverted as exc:
                assert exc.error_name == "NothingToRequest" and sum(before.values()) == 0
                return
            amounts = [self.world.c("bank").transfer_request(i).amount for i in ids]
            assert sum(amounts) == sum(before.values()), "split parts must sum to the requested accruals"
            if data.draw(st.booleans()):
                self.world.c("bank").confirm_transfer(ids[0], self._next("wire"))

        @invariant()
        def fees_balance(self) -> None:
            for pid in self.policies:
                pol = self.world.c("bank").policy(pid)
                assert pol.settled == pol.accrued + pol.requested and pol.requested <= pol.settled

        @invariant()
        def caps_hold(self) -> None:
            for serial in self.serials:
                log = self.world.c("bank").issue_log(serial)
                assert log.spent <= log.cap
                assert log.next_seq == len(self.settled_seqs[serial])

        @invariant()
        def deposits_back_caps(self) -> None:
            for user in USERS:
                funds = self.world.c("bank").user_funds(user)
                assert funds.deposited == self.deposited[user] and funds.allocated <= funds.deposited

    Machine.TestCase().runTest()
