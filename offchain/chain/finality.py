"""When a transaction counts: pending, included, final or reorged, the same way on anvil, Clique and a BFT chain.

A `FinalityPolicy` says how deep an inclusion must be (`confirmations`, counted from the including block to the
head, inclusive) and, on Clique, how many distinct signers must have sealed those blocks. `FinalityTracker`
answers for a (tx_hash, block_number, block_hash) what the chain says now. It reads blocks by number and
`latest` only: never the `safe`/`finalized` tags, which geth refuses on Clique. Final means "at the configured
depth", not irreversible: on Clique it is a bound on crash and partition faults, not on malicious signers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from eth_utils import to_checksum_address

from offchain.core.errors import ChainError

CLIQUE_MIN_CONFIRMATIONS = 6  # for money: deeper than any crash/partition reorg of a small consortium


class TxState(str, Enum):
    PENDING = "pending"  # no receipt (and none recorded)
    INCLUDED = "included"  # in the canonical chain, not yet at the configured depth
    FINAL = "final"  # in the canonical chain at the configured depth
    REORGED = "reorged"  # the recorded block is no longer canonical, or the receipt is gone


class FinalityTimeout(ChainError):
    """A transaction did not reach the wanted state in time; `state` is the last one seen."""

    code = "finality_timeout"
    http_status = 504

    def __init__(self, message: str, *, tx_hash: str | None = None, wanted: str | None = None,
                 state: str | None = None, timeout_s: float | None = None) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash
        self.wanted = wanted
        self.state = state
        self.timeout_s = timeout_s


@dataclass(frozen=True)
class FinalityPolicy:
    """`confirmations` blocks from the including block to the head (inclusive); on Clique also `distinct_signers`
    different sealers among those blocks (when the reader knows the signers; otherwise plain depth)."""

    kind: str
    confirmations: int
    distinct_signers: int = 0

    @classmethod
    def instant(cls, kind: str = "anvil") -> FinalityPolicy:
        """anvil (one honest dev node) and BFT chains (Besu QBFT/IBFT2: a block is final when it is sealed)."""
        return cls(kind=kind, confirmations=0)

    @classmethod
    def clique(cls, signers: int, confirmations: int | None = None) -> FinalityPolicy:
        """Clique with `signers` signers: a quorum of floor(N/2)+1 distinct sealers, depth max(quorum, 6)."""
        quorum = signers // 2 + 1
        depth = max(quorum, CLIQUE_MIN_CONFIRMATIONS) if confirmations is None else confirmations
        if depth < quorum:
            raise ChainError(f"confirmations {depth} is below the Clique quorum {quorum} of {signers} signers",
                             confirmations=depth, quorum=quorum)
        return cls(kind="clique", confirmations=depth, distinct_signers=quorum)

    @classmethod
    def detect(cls, request: Callable[[str, list[Any]], Any], confirmations: int | None = None) -> FinalityPolicy:
        """Pick the policy from the node: anvil and Besu (QBFT) 0, Clique by its signer count, else depth 6.

        `request(method, params)` returns the JSON-RPC result or raises. `confirmations` overrides the depth.
        """
        version = str(_try(request, "web3_clientVersion", []) or "").lower()
        if "anvil" in version:
            return cls(kind="anvil", confirmations=confirmations or 0)
        if "besu" in version and _try(request, "qbft_getValidatorsByBlockNumber", ["latest"]) is not None:
            return cls(kind="qbft", confirmations=confirmations or 0)
        signers = _try(request, "clique_getSigners", ["latest"])
        if signers:
            return cls.clique(len(signers), confirmations)
        return cls(kind="unknown", confirmations=CLIQUE_MIN_CONFIRMATIONS if confirmations is None else confirmations)


def _try(request: Callable[[str, list[Any]], Any], method: str, params: list[Any]) -> Any:
    try:
        return request(method, params)
    except Exception:  # noqa: BLE001 - probing: a node that lacks the method answers with an error
        return None


@dataclass(frozen=True)
class Inclusion:
    """Where a transaction was seen: block number and hash (the hash is what a reorg changes)."""

    tx_hash: str
    block_number: int
    block_hash: str


@dataclass(frozen=True)
class Verdict:
    """The tracker's answer. `inclusion` is the recorded one (or the receipt's, when none was recorded);
    `now_in` is where the receipt is now when a reorged transaction was included again elsewhere."""

    state: TxState
    tx_hash: str
    inclusion: Inclusion | None = None
    depth: int = 0
    signers: int = 0
    now_in: Inclusion | None = None


class ChainReader(Protocol):
    """The reads finality needs; `Web3Reader` is the implementation over a Web3, tests may bring their own."""

    def head_number(self) -> int: ...

    def block_hash(self, number: int) -> str | None: ...

    def receipt_block(self, tx_hash: str) -> tuple[int, str] | None: ...

    def signer_of(self, number: int, block_hash: str) -> str | None: ...


class Web3Reader:
    """ChainReader over a Web3 (any provider, including the failover one); Clique signers via clique_getSigner,
    cached by block hash, and given up on for good if the node does not have the method (anvil, Besu)."""

    def __init__(self, w3: Any) -> None:
        self.w3 = w3
        self._signers: dict[str, str] = {}
        self._has_clique: bool | None = None

    def _request(self, method: str, params: list[Any]) -> Any:
        reply = self.w3.provider.make_request(method, params)
        if "error" in reply:
            raise ChainError(f"{method}: {reply['error'].get('message')}", method=method)
        return reply.get("result")

    def head_number(self) -> int:
        return int(self._request("eth_blockNumber", []), 16)

    def block_hash(self, number: int) -> str | None:
        block = self._request("eth_getBlockByNumber", [hex(number), False])
        return str(block["hash"]) if block else None

    def receipt_block(self, tx_hash: str) -> tuple[int, str] | None:
        receipt = self._request("eth_getTransactionReceipt", [tx_hash])
        if not receipt or receipt.get("blockHash") is None:
            return None
        return int(receipt["blockNumber"], 16), str(receipt["blockHash"])

    def signer_of(self, number: int, block_hash: str) -> str | None:
        if self._has_clique is False:
            return None
        if block_hash not in self._signers:
            try:
                self._signers[block_hash] = to_checksum_address(self._request("clique_getSigner", [block_hash]))
                self._has_clique = True
            except ChainError:
                if self._has_clique is None:
                    self._has_clique = False
                return None
        return self._signers[block_hash]


class _MovedWhileCounting(Exception):
    """Internal: a block read while counting signers vanished or changed (a reorg in progress)."""


class FinalityTracker:
    """Says, for a transaction and the inclusion recorded for it, what the chain says now (see `TxState`)."""

    def __init__(self, reader: ChainReader, policy: FinalityPolicy) -> None:
        self.reader = reader
        self.policy = policy

    def check(self, tx_hash: str, recorded: Inclusion | None = None) -> Verdict:
        """The state of `tx_hash`. With `recorded`, the block at its height must still carry its hash and the
        receipt must still point there, else REORGED (with `now_in` if it was included again elsewhere)."""
        found = self.reader.receipt_block(tx_hash)
        if recorded is None:
            if found is None:
                return Verdict(TxState.PENDING, tx_hash)
            recorded = Inclusion(tx_hash, found[0], found[1])
        if self.reader.block_hash(recorded.block_number) != recorded.block_hash:
            now_in = Inclusion(tx_hash, *found) if found is not None else None
            return Verdict(TxState.REORGED, tx_hash, recorded, now_in=now_in)
        if found is None or found[1] != recorded.block_hash:
            now_in = Inclusion(tx_hash, *found) if found is not None else None
            return Verdict(TxState.REORGED, tx_hash, recorded, now_in=now_in)
        return self._depth_verdict(tx_hash, recorded)

    def _depth_verdict(self, tx_hash: str, inclusion: Inclusion) -> Verdict:
        head = self.reader.head_number()
        depth = head - inclusion.block_number + 1
        signers: int | None = None
        if self.policy.distinct_signers:
            try:
                signers = self._distinct_signers(inclusion, head)
            except _MovedWhileCounting:  # a reorg happened while counting: say what the chain says now
                return self.check(tx_hash, inclusion)
        enough_signers = signers is None or signers >= self.policy.distinct_signers
        final = depth >= self.policy.confirmations and enough_signers
        return Verdict(TxState.FINAL if final else TxState.INCLUDED, tx_hash, inclusion, depth, signers or 0)

    def _distinct_signers(self, inclusion: Inclusion, head: int) -> int | None:
        """Distinct sealers of blocks inclusion..head (stops at the quorum); None when the reader does not know
        signers (plain depth then). Raises _MovedWhileCounting if the chain changed under the count."""
        seen: set[str] = set()
        for number in range(inclusion.block_number, head + 1):
            block_hash = self.reader.block_hash(number)
            if block_hash is None:
                raise _MovedWhileCounting
            signer = self.reader.signer_of(number, block_hash)
            if signer is None:
                return None
            seen.add(signer)
            if len(seen) >= self.policy.distinct_signers:
                break
        if self.reader.block_hash(inclusion.block_number) != inclusion.block_hash:
            raise _MovedWhileCounting
        return len(seen)

    def wait(self, tx_hash: str, recorded: Inclusion | None = None, *, until: TxState = TxState.FINAL,
             timeout_s: float = 120.0, poll_s: float = 0.2) -> Verdict:
        """Poll `check` until the state is `until` (or REORGED, which is returned: the caller decides); raises
        FinalityTimeout after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        order = [TxState.PENDING, TxState.INCLUDED, TxState.FINAL]
        while True:
            verdict = self.check(tx_hash, recorded)
            if verdict.state is TxState.REORGED:
                return verdict
            if order.index(verdict.state) >= order.index(until):
                return verdict
            recorded = recorded or verdict.inclusion
            if time.monotonic() > deadline:
                raise FinalityTimeout(f"{tx_hash} is {verdict.state.value}, not {until.value}, after {timeout_s} s",
                                      tx_hash=tx_hash, wanted=until.value, state=verdict.state.value,
                                      timeout_s=timeout_s)
            time.sleep(poll_s)
