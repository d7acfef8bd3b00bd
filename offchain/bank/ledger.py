"""The bank's double-entry ledger (the account management institution): deposits into the CC management
account and exactly-once transfers from it to payees.

Rows are append-only: balances are sums of postings, a correction is a new entry. Every entry is keyed by the
sender's id (deposit id, transfer request id) under a unique constraint checked in the same transaction as its
postings, and debits of cc:management hold a row lock, so concurrent replays post once and never overdraw.
This module does not talk to the chain or verify signatures: the bank service does that before calling it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from offchain.bank.store import JournalEntry, LedgerAccount, Posting
from offchain.core.types import Clock
from offchain.storage import money, payload_hash, session_scope
from offchain.core.errors import DuplicateMessage, InsufficientFunds, InvalidAmount, UnbalancedEntry, UnknownAccount

CASH_ACCOUNT = "external:cash"
CC_MANAGEMENT_ACCOUNT = "cc:management"
UINT96_MAX = 2**96 - 1


def user_account(user_id: str) -> str:
    """Ledger account of a user: `user:<id>`."""
    return f"user:{user_id}"


def payee_account(address: str) -> str:
    """Ledger account of a payee (content provider, SP...): `payee:<checksum address>`."""
    return f"payee:{address}"


def _account_kind(account_id: str) -> str:
    prefix = account_id.split(":", 1)[0]
    if prefix not in ("user", "payee", "cc", "external") or ":" not in account_id:
        raise UnknownAccount(f"account id {account_id!r} has no known prefix", account=account_id)
    return prefix


@dataclass(frozen=True)
class PostedEntry:
    """The outcome of a deposit or transfer: `created` is False when it was an identical replay."""

    key: str
    entry_id: int
    bank_ref: bytes
    amount: int
    created: bool


@dataclass(frozen=True)
class EntryView:
    """A journal entry with its legs, for reconciliation."""

    entry_id: int
    key: str
    kind: str
    bank_ref: bytes
    external_ref: str | None
    created_at: int
    postings: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class TrialBalance:
    """Sum of positive legs (credits to holders) and of negative legs (debits); equal when the books balance."""

    credits: int
    debits: int

    @property
    def balanced(self) -> bool:
        return self.credits == self.debits


def _check_amount(amount: int, what: str) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= UINT96_MAX:
        raise InvalidAmount(f"{what} amount must be an int in 1..2**96-1", value=repr(amount), kind=what)


class Ledger:
    """Double-entry books over one database; every public method is its own transaction."""

    def __init__(
        self,
        engine: Engine,
        *,
        cc_management_account: str = CC_MANAGEMENT_ACCOUNT,
        clock: Clock = time.time,
        new_bank_ref: Callable[[], bytes] = lambda: os.urandom(32),
    ) -> None:
        _account_kind(cc_management_account)
        self._engine = engine
        self._cc = cc_management_account
        self._clock = clock
        self._new_bank_ref = new_bank_ref

    # --- operations -----------------------------------------------------------------------------------------
    def open_account(self, account_id: str) -> None:
        """Open `account_id` (idempotent). Accounts are also opened on first use by deposits and transfers."""
        with session_scope(self._engine) as session:
            self._ensure_account(session, account_id)

    def deposit(
        self, deposit_id: bytes | str, user_id: str, amount: int, external_ref: str | None = None
    ) -> PostedEntry:
        """Cash enters for `user_id` and the user pays it into the CC management account (deposit backing the allowance).

        Exactly once per deposit id: an identical replay returns the original entry, another payload raises
        DuplicateMessage.
        """
        _check_amount(amount, "deposit")
        key = "deposit:" + (deposit_id.hex() if isinstance(deposit_id, bytes) else deposit_id)
        digest = payload_hash({"user_id": user_id, "amount": amount})
        user = user_account(user_id)
        legs = [(CASH_ACCOUNT, -amount), (user, amount), (user, -amount), (self._cc, amount)]

        def post(session: Session) -> PostedEntry:
            return self._post(session, "deposit", key, digest, legs, amount, external_ref)

        return self._exactly_once(key, digest, amount, post)

    def execute_transfer(
        self, request_id: bytes, payee: str, amount: int, request_hash: bytes | None = None
    ) -> PostedEntry:
        """Pay `amount` from the CC management account to `payee` exactly once per request id.

        Identical replay -> the original bank_ref (created=False); same id with another payee, amount or
        request_hash -> DuplicateMessage; not enough money in cc:management -> InsufficientFunds.
        """
        _check_amount(amount, "transfer")
        key = "transfer:0x" + request_id.hex()
        digest = payload_hash({"payee": payee, "amount": amount, "request_hash": request_hash})
        legs = [(self._cc, -amount), (payee_account(payee), amount)]

        def post(session: Session) -> PostedEntry:
            self._lock_account(session, self._cc)
            replay = _find_entry(session, key)
            if replay is not None:
                return _replayed(replay, digest, amount, key)
            available = _balance(session, self._cc)
            if available < amount:
                raise InsufficientFunds(
                    f"{self._cc} holds {available}, transfer {key} needs {amount}",
                    account=self._cc, balance=available, wanted=amount, request_id=request_id,
                )
            return self._post(session, "transfer", key, digest, legs, amount, None)

        return self._exactly_once(key, digest, amount, post)

    # --- queries ----------------------------------------------------------------------------------------------
    def balance(self, account_id: str) -> int:
        """Current balance of one account (UnknownAccount if it was never opened)."""
        with session_scope(self._engine) as session:
            if session.get(LedgerAccount, account_id) is None:
                raise UnknownAccount(f"no ledger account {account_id}", account=account_id)
            return _balance(session, account_id)

    def balances(self) -> dict[str, int]:
        """Balance of every open account (external:cash is minus all money that entered)."""
        with session_scope(self._engine) as session:
            opened = {a: 0 for a in session.scalars(select(LedgerAccount.account_id))}
            query = select(Posting.account_id, func.sum(Posting.amount)).group_by(Posting.account_id)
            opened.update({account: money(total) for account, total in session.execute(query)})
            return opened

    def trial_balance(self) -> TrialBalance:
        """Total credits and debits over all postings."""
        with session_scope(self._engine) as session:
            credits = func.sum(case((Posting.amount > 0, Posting.amount), else_=0))
            debits = func.sum(case((Posting.amount < 0, -Posting.amount), else_=0))
            row = session.execute(select(credits, debits)).one()
            return TrialBalance(credits=money(row[0]), debits=money(row[1]))

    def verify_balanced(self) -> list[int]:
        """Ids of journal entries whose legs do not sum to zero (empty when the books are sound)."""
        with session_scope(self._engine) as session:
            query = (
                select(Posting.entry_id)
                .group_by(Posting.entry_id)
                .having(func.sum(Posting.amount) != 0)
                .order_by(Posting.entry_id)
            )
            return list(session.scalars(query))

    def entries(self, *, after_id: int = 0, kind: str | None = None, limit: int = 1000) -> list[EntryView]:
        """Journal entries with id > after_id (optionally of one kind), oldest first, for reconciliation."""
        with session_scope(self._engine) as session:
            query = select(JournalEntry).where(JournalEntry.id > after_id).order_by(JournalEntry.id).limit(limit)
            if kind is not None:
                query = query.where(JournalEntry.kind == kind)
            rows = list(session.scalars(query))
            legs = _legs_of(session, [r.id for r in rows])
            return [
                EntryView(r.id, r.idempotency_key, r.kind, r.bank_ref, r.external_ref, r.created_at, legs.get(r.id, ()))
                for r in rows
            ]

    def find_transfer(self, request_id: bytes) -> EntryView | None:
        """The entry that executed transfer `request_id`, or None."""
        with session_scope(self._engine) as session:
            row = _find_entry(session, "transfer:0x" + request_id.hex())
            if row is None:
                return None
            legs = _legs_of(session, [row.id]).get(row.id, ())
            return EntryView(
                row.id, row.idempotency_key, row.kind, row.bank_ref, row.external_ref, row.created_at, legs
            )

    # --- internals --------------------------------------------------------------------------------------------
    def _exactly_once(
        self, key: str, digest: bytes, amount: int, post: Callable[[Session], PostedEntry]
    ) -> PostedEntry:
        """Run `post` in a transaction; if a concurrent twin won the unique key, answer as a replay of it."""
        try:
            with session_scope(self._engine) as session:
                return post(session)
        except IntegrityError:
            with session_scope(self._engine) as session:
                existing = _find_entry(session, key)
                if existing is None:
                    raise
                return _replayed(existing, digest, amount, key)

    def _post(
        self,
        session: Session,
        kind: str,
        key: str,
        digest: bytes,
        legs: Sequence[tuple[str, int]],
        amount: int,
        external_ref: str | None,
    ) -> PostedEntry:
        """Insert one balanced entry with its legs, or return the identical earlier one."""
        replay = _find_entry(session, key)
        if replay is not None:
            return _replayed(replay, digest, amount, key)
        if sum(amount for _, amount in legs) != 0:
            raise UnbalancedEntry(f"entry {key} does not balance", key=key, total=sum(a for _, a in legs))
        for account_id in {account for account, _ in legs}:
            self._ensure_account(session, account_id)
        entry = JournalEntry(
            idempotency_key=key, kind=kind, payload_hash=digest, bank_ref=self._new_bank_ref(),
            external_ref=external_ref, created_at=int(self._clock()),
        )
        session.add(entry)
        session.flush()  # the unique idempotency key is checked here, inside this transaction
        session.add_all(Posting(entry_id=entry.id, account_id=account, amount=leg) for account, leg in legs)
        session.flush()
        return PostedEntry(key, entry.id, entry.bank_ref, amount, created=True)

    def _ensure_account(self, session: Session, account_id: str) -> None:
        """Open an account unless it exists; a concurrent opener winning the race is fine."""
        kind = _account_kind(account_id)
        if session.get(LedgerAccount, account_id) is not None:
            return
        try:
            with session.begin_nested():
                session.add(LedgerAccount(account_id=account_id, kind=kind, opened_at=int(self._clock())))
        except IntegrityError:
            if session.get(LedgerAccount, account_id) is None:
                raise

    def _lock_account(self, session: Session, account_id: str) -> None:
        """Row lock (PostgreSQL `FOR UPDATE`) serializing debits of one account; SQLite's BEGIN IMMEDIATE
        already serializes every writer, so the clause is a no-op there."""
        self._ensure_account(session, account_id)
        session.execute(select(LedgerAccount).where(LedgerAccount.account_id == account_id).with_for_update())


def _find_entry(session: Session, key: str) -> JournalEntry | None:
    return session.scalars(select(JournalEntry).where(JournalEntry.idempotency_key == key)).one_or_none()


def _replayed(entry: JournalEntry, digest: bytes, amount: int, key: str) -> PostedEntry:
    """Answer an identical replay with the original entry; refuse the same key with another payload."""
    if entry.payload_hash != digest:
        raise DuplicateMessage(
            f"{key} was already executed with a different payload; the original stands",
            key=key, bank_ref=entry.bank_ref, stored_hash=entry.payload_hash, got_hash=digest,
        )
    return PostedEntry(key, entry.id, entry.bank_ref, amount, created=False)


def _balance(session: Session, account_id: str) -> int:
    return money(session.scalar(select(func.sum(Posting.amount)).where(Posting.account_id == account_id)))


def _legs_of(session: Session, entry_ids: Sequence[int]) -> dict[int, tuple[tuple[str, int], ...]]:
    if not entry_ids:
        return {}
    query = select(Posting).where(Posting.entry_id.in_(entry_ids)).order_by(Posting.entry_id, Posting.id)
    legs: dict[int, list[tuple[str, int]]] = {}
    for posting in session.scalars(query):
        legs.setdefault(posting.entry_id, []).append((posting.account_id, posting.amount))
    return {entry_id: tuple(items) for entry_id, items in legs.items()}
