"""The chain client of Clearhouse: `ClearhouseChain`, one method per contract function, for one member key.

The client sends one signed transaction per contract call with a locally managed nonce and a fast receipt wait,
and turns every revert into `ContractReverted(error_name=..., error_args=...)` decoded from the ABI. It does not retry
effects: callers own idempotency (ids are in the logs). Private keys stay in memory; never log them.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

from eth_account import Account
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import TimeExhausted, TransactionNotFound
from web3.logs import DISCARD
from web3.types import TxReceipt

from offchain.core.errors import CallRefused, ChainError, ChainUnreachable
from offchain.chain.codec import (SettlementItem, decode_revert, encode_balance_statement, encode_settlement_item,
                                  encode_skip_range, revert_data)
from offchain.chain.deploy import RECEIPT_POLL_S, Deployment
from offchain.chain.views import IssueLogInfo, MemberInfo, PolicyInfo, TransferRequestInfo, UserFunds

ZERO_BYTES32 = b"\x00" * 32
FEE_CACHE_S = 2.0
FORGOTTEN_CHECK_POLLS = 200  # while waiting for a receipt, look for transactions the node forgot every ~1 s
PRIORITY_FEE_WEI = 1_000_000_000
FEE_BUMP = 1.25  # a replacement at the same nonce pays this much more (nodes require +10 %)


def _bumped(fee: Any) -> int:
    return -(-int(fee) * int(FEE_BUMP * 100) // 100)  # ceiling, in integer wei


def _decode_raw(raw_tx: bytes) -> dict[str, Any]:
    """The fields of a signed transaction (EIP-1559 typed or legacy), as this client signs them."""
    import rlp
    from eth_account.typed_transactions import TypedTransaction

    if raw_tx[:1] == b"\x02":
        from hexbytes import HexBytes

        fields = TypedTransaction.from_bytes(HexBytes(raw_tx)).as_dict()
        return {"nonce": fields["nonce"], "to": to_checksum_address(fields["to"]), "data": fields["data"],
                "value": fields["value"], "gas": fields["gas"], "maxFeePerGas": fields["maxFeePerGas"],
                "maxPriorityFeePerGas": fields["maxPriorityFeePerGas"]}
    nonce, gas_price, gas, to, value, data, *_sig = rlp.decode(raw_tx)
    return {"nonce": int.from_bytes(nonce, "big"), "gasPrice": int.from_bytes(gas_price, "big"),
            "gas": int.from_bytes(gas, "big"), "to": to_checksum_address(to), "value": int.from_bytes(value, "big"),
            "data": data}


# --- client ---------------------------------------------------------------------------------------------------
class ClearhouseChain:
    """Thin client of one deployed Clearhouse for one member key: one method per contract function.

    Writes estimate gas first (so a revert is decoded before anything is sent), sign locally with a local nonce,
    and wait for the receipt polling every 5 ms. Every revert raises ContractReverted(error_name=..., error_args=...).
    """

    def __init__(self, w3: Web3, deployment: Deployment, private_key: bytes, *, gas_margin: float = 1.25,
                 receipt_timeout_s: float = 60.0, stuck_after_s: float | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.address = deployment.address
        self.contract = w3.eth.contract(address=deployment.address, abi=deployment.abi)
        self.domain = deployment.domain
        # private_key: the 32 key bytes, or a Signer from offchain.trust.keys (a PKCS#11 token key)
        self._account = Account.from_key(private_key) if isinstance(private_key, (bytes, bytearray, str)) \
            else private_key
        self.sender = self._account.address
        self._gas_margin = gas_margin
        self._timeout_s = receipt_timeout_s
        self._stuck_after_s = stuck_after_s  # wait_receipt replaces a transaction unmined this long (higher fees)
        self._nonce: int | None = None
        self._sent: dict[int, tuple[str, bytes]] = {}  # nonce -> (tx hash, raw tx) until the chain is past it
        self._fees: dict[str, int] | None = None
        self._fees_at = 0.0
        self._lock = threading.Lock()

    # sending ---------------------------------------------------------------------------------------------------
    def _unsigned(self, function: str, args: tuple[Any, ...], gas: int | None) -> dict[str, Any]:
        """The call `function(*args)` from this member, with its gas (estimated when not given), unsigned."""
        data = self.contract.encode_abi(function, args=list(args))
        tx: dict[str, Any] = {"from": self.sender, "to": self.address, "data": data, "value": 0}
        tx["gas"] = self._estimate(tx, function) if gas is None else gas
        return tx

    def _sign_with_next_nonce(self, tx: dict[str, Any]) -> Any:
        """Sign `tx` with the next nonce (read from the node after a reset) and the current fees; the caller
        holds `self._lock` and advances the nonce once the transaction is sent."""
        if self._nonce is None:
            self._nonce = self.w3.eth.get_transaction_count(self.sender, "pending")
        tx.update(nonce=self._nonce, chainId=self.deployment.chain_id, **self._fee_fields())
        return self._account.sign_transaction(tx)

    def send(self, function: str, *args: Any, gas: int | None = None) -> TxReceipt:
        """Build, sign and send `function(*args)` from this member; returns the receipt of a successful tx."""
        tx = self._unsigned(function, args, gas)
        with self._lock:
            signed = self._sign_with_next_nonce(tx)
            try:
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:
                self._nonce = None  # resync from the node on the next send
                raise ChainError(f"{function}: sending failed: {exc}", function=function) from exc
            self._sent[self._nonce] = ("0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction))
            self._nonce += 1
        receipt = self.wait_receipt(tx_hash)
        if receipt["status"] != 1:
            raise self._replay_failure(tx, receipt, function)
        return receipt

    def send_via_outbox(self, function: str, *args: Any, record: Callable[[str, int, bytes], None],
                        gas: int | None = None) -> str:
        """Sign `function(*args)` with the next nonce, call `record(tx_hash, nonce, raw_tx)` (an outbox write)
        BEFORE broadcasting, then broadcast; returns the tx hash without waiting. If `record` raises, nothing is
        sent and the nonce is not consumed. Shares the nonce (and lock) with `send`."""
        tx = self._unsigned(function, args, gas)
        with self._lock:
            signed = self._sign_with_next_nonce(tx)
            tx_hash = "0x" + bytes(signed.hash).hex()
            record(tx_hash, self._nonce, bytes(signed.raw_transaction))
            try:
                self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:
                self._nonce = None  # resync from the node on the next send
                raise ChainError(f"{function}: sending failed: {exc}", function=function, tx_hash=tx_hash) from exc
            self._sent[self._nonce] = (tx_hash, bytes(signed.raw_transaction))
            self._nonce += 1
        return tx_hash

    def estimate(self, function: str, *args: Any) -> int:
        """The gas `send` gives `function(*args)` from this member: the node's estimate plus the client's margin.
        A revert raises ContractReverted, the node's own refusal (out of gas, request size) CallRefused, no answer
        ChainUnreachable. A pre-check that also sizes the transaction: pass the result as `gas` to a send."""
        return int(self._unsigned(function, args, None)["gas"])

    def wait_receipt(self, tx_hash: Any, timeout_s: float | None = None) -> TxReceipt:
        """Poll for the receipt (TimeExhausted after `timeout_s`, default the client's); before the first poll and
        every FORGOTTEN_CHECK_POLLS polls, re-broadcast what the node forgot, so a gap cannot stall it."""
        started = last_sent = time.monotonic()
        deadline = started + (self._timeout_s if timeout_s is None else timeout_s)
        candidates = [tx_hash if isinstance(tx_hash, str) else "0x" + bytes(tx_hash).hex()]
        polls = 0
        while True:
            if polls % FORGOTTEN_CHECK_POLLS == 0:
                self.rebroadcast_forgotten()
            for candidate in candidates:  # the first send, then each replacement: one of them uses the nonce
                try:
                    return self.w3.eth.get_transaction_receipt(candidate)  # type: ignore[arg-type]
                except TransactionNotFound:
                    pass
            if self._stuck_after_s is not None and time.monotonic() - last_sent >= self._stuck_after_s:
                replacement = self._replace_sent(candidates[-1])
                if replacement is not None:
                    candidates.append(replacement)
                last_sent = time.monotonic()
            if time.monotonic() > deadline:
                shown = tx_hash if isinstance(tx_hash, str) else "0x" + bytes(tx_hash).hex()
                raise TimeExhausted(f"transaction {shown} is not in the chain after {timeout_s or self._timeout_s} s")
            polls += 1
            time.sleep(RECEIPT_POLL_S)

    def _replace_sent(self, tx_hash: str) -> str | None:
        """Replace `tx_hash` if it is one of this client's unmined transactions (see `replace_stuck`)."""
        raw = next((raw for sent_hash, raw in self._sent.values() if sent_hash == tx_hash), None)
        if raw is None:
            return None
        try:
            return self.replace_stuck(raw)
        except ChainError as exc:  # e.g. no funds for the higher fee: keep waiting for what was sent
            import logging

            logging.getLogger(__name__).warning("could not replace stuck transaction %s: %s", tx_hash, exc.message)
            return None

    def replace_stuck(self, raw_tx: bytes, *, record: Callable[[str, int, bytes], None] | None = None
                      ) -> str | None:
        """Replace this client's unmined transaction `raw_tx` at the same nonce with the same call and higher fees:
        at least FEE_BUMP times the old ones (nodes refuse a replacement below +10 %) and at least what the chain
        asks now. `record(new_hash, nonce, new_raw)` (an outbox write) runs before the broadcast. Returns the new
        hash, or None when the nonce is already used on chain (the old one, or another, was mined).

        Whichever of the two is mined, the nonce is used once: callers resolve by the chain's state, not a hash."""
        old = _decode_raw(raw_tx)
        nonce = int(old["nonce"])
        with self._lock:
            if self.w3.eth.get_transaction_count(self.sender, "latest") > nonce:
                return None
            fresh = self._next_block_fees()  # what the next block asks, not the cached price that got stuck
            tx: dict[str, Any] = {"from": self.sender, "to": old["to"], "data": old["data"], "value": old["value"],
                                  "gas": old["gas"], "nonce": nonce, "chainId": self.deployment.chain_id}
            if "maxFeePerGas" in old and "maxFeePerGas" in fresh:
                priority = max(_bumped(old["maxPriorityFeePerGas"]), fresh["maxPriorityFeePerGas"])
                tx.update(maxPriorityFeePerGas=priority,
                          maxFeePerGas=max(_bumped(old["maxFeePerGas"]), fresh["maxFeePerGas"], priority))
            else:
                tx["gasPrice"] = max(_bumped(old.get("gasPrice") or old.get("maxFeePerGas", 0)),
                                     fresh.get("gasPrice") or fresh["maxFeePerGas"])
            signed = self._account.sign_transaction(tx)
            tx_hash = "0x" + bytes(signed.hash).hex()
            if record is not None:
                record(tx_hash, nonce, bytes(signed.raw_transaction))
            try:
                self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:
                raise ChainError(f"replacing the transaction at nonce {nonce} failed: {exc}", tx_hash=tx_hash) \
                    from exc
            self._sent[nonce] = (tx_hash, bytes(signed.raw_transaction))
            return tx_hash

    def _next_block_fees(self) -> dict[str, int]:
        """Fees for the next block (the pending block's base fee where the node has one), also cached for sends."""
        try:
            base_fee = self.w3.eth.get_block("pending").get("baseFeePerGas")
        except Exception:  # noqa: BLE001 - a node without a pending block: the latest one's base fee
            base_fee = self.w3.eth.get_block("latest").get("baseFeePerGas")
        if base_fee is None:
            fees = {"gasPrice": int(self.w3.eth.gas_price)}
        else:
            fees = {"maxFeePerGas": 3 * int(base_fee) + PRIORITY_FEE_WEI, "maxPriorityFeePerGas": PRIORITY_FEE_WEI}
        self._fees, self._fees_at = fees, time.monotonic()
        return fees

    def rebroadcast_forgotten(self) -> list[str]:
        """Send again, unchanged, each transaction of this client the node no longer knows (a node restart drops
        its mempool): same nonce and hash, so it applies at most once, and later nonces are no longer stuck behind
        the gap. One that cannot be re-sent is forgotten with all after it, and the nonce is re-read from the chain
        on the next send. Returns the hashes sent again."""
        with self._lock:
            if not self._sent:
                return []
            mined_through = self.w3.eth.get_transaction_count(self.sender, "latest")
            for nonce in [n for n in self._sent if n < mined_through]:
                del self._sent[nonce]
            resent: list[str] = []
            for nonce in sorted(self._sent):
                tx_hash, raw_tx = self._sent[nonce]
                if self._node_knows(tx_hash):
                    continue
                try:
                    self.w3.eth.send_raw_transaction(raw_tx)
                except Exception:  # noqa: BLE001 - replaced or invalid now: resync from the chain instead
                    for later in [n for n in self._sent if n >= nonce]:
                        del self._sent[later]
                    self._nonce = None
                    break
                resent.append(tx_hash)
            return resent

    def _node_knows(self, tx_hash: str) -> bool:
        try:
            self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        return True

    def call(self, function: str, *args: Any, block: int | str = "latest") -> Any:
        """eth_call `function(*args)` at `block` (a number, or "latest"); reverts become ContractReverted."""
        try:
            return getattr(self.contract.functions, function)(*args).call({"from": self.sender},
                                                                          block_identifier=block)
        except Exception as exc:
            raise self._as_revert(exc, function) from exc

    def _estimate(self, tx: dict[str, Any], function: str) -> int:
        try:
            estimate = self.w3.eth.estimate_gas(tx)  # type: ignore[arg-type]
        except Exception as exc:
            raise self._as_revert(exc, function) from exc
        return int(estimate * self._gas_margin) + 10_000

    def _fee_fields(self) -> dict[str, int]:
        """EIP-1559 fees from a base fee cached for FEE_CACHE_S (3x headroom), or the node's legacy gas price.

        Never derive the price from eth_gasPrice times a factor: anvil's suggestion follows recent tx prices,
        so that feeds back and doubles every block.
        """
        now = time.monotonic()
        if self._fees is None or now - self._fees_at > FEE_CACHE_S:
            base_fee = self.w3.eth.get_block("latest").get("baseFeePerGas")
            if base_fee is None:
                self._fees = {"gasPrice": int(self.w3.eth.gas_price)}
            else:
                self._fees = {"maxFeePerGas": 3 * int(base_fee) + PRIORITY_FEE_WEI,
                              "maxPriorityFeePerGas": PRIORITY_FEE_WEI}
            self._fees_at = now
        return self._fees

    def _as_revert(self, exc: Exception, function: str) -> ChainError:
        """ContractReverted for revert data; CallRefused when the node answered with an error of its own (out of
        gas, memory, request size: the call's fault, deterministic); ChainUnreachable only when it did not
        answer (connection refused or reset, timeout, a gateway's 5xx)."""
        data = revert_data(exc)
        if data is None and "revert" not in str(exc).lower():
            refusal = node_refusal(exc)
            if refusal is not None:
                return CallRefused(f"{function}: the node refused the call: {refusal[0]}", function=function,
                                   reason=refusal[0][:300], rpc_code=refusal[1])
            return ChainUnreachable(f"{function}: node error: {exc}", function=function)
        return decode_revert(self.deployment.abi, data, function)

    def revert_reason(self, receipt: TxReceipt, function: str) -> ChainError:
        """The decoded error of a mined transaction that reverted (`receipt["status"] == 0`), to raise.

        For transactions this client did not wait for itself (`send_via_outbox`, a resumed raw transaction):
        fetches the transaction and replays its call at the parent block. Returns ContractReverted with
        `error_name`/`args` of the custom error, ContractReverted with `error_name=None` when the replay passes
        (out of gas, or the state changed earlier in the block), or ChainUnreachable when the node fails.
        Usage: `raise chain.revert_reason(receipt, "renew")`. A successful receipt is a caller bug: ValueError.
        """
        if receipt["status"] == 1:
            raise ValueError(f"{function}: transaction {receipt['transactionHash'].hex()} succeeded; no revert")
        tx = self.w3.eth.get_transaction(receipt["transactionHash"])
        call = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}
        return self._replay_failure(call, receipt, function)

    def _replay_failure(self, tx: dict[str, Any], receipt: TxReceipt, function: str) -> ChainError:
        call = {k: tx[k] for k in ("from", "to", "data", "gas")}
        try:
            self.w3.eth.call(call, receipt["blockNumber"] - 1)  # type: ignore[arg-type]
        except Exception as exc:
            return self._as_revert(exc, function)
        return ContractReverted(
            f"{function} failed in block {receipt['blockNumber']} (out of gas or state changed)",
            error_name=None, error_args={}, function=function, tx_hash=receipt["transactionHash"].hex(),
        )

    # writes ----------------------------------------------------------------------------------------------------
    def register_member(self, account: str, role: int, member_id: bytes, cert_fingerprint: bytes,
                        valid_from: int, valid_until: int, *, user_id_hash: bytes = bytes(32)) -> TxReceipt:
        """`user_id_hash` is required (non-zero) for a device and zero for every other role (InvalidUserIdHash)."""
        return self.send("registerMember", to_checksum_address(account), int(role), member_id, cert_fingerprint,
                         user_id_hash, valid_from, valid_until)

    def revoke_member(self, account: str) -> TxReceipt:
        return self.send("revokeMember", to_checksum_address(account))

    def record_deposit(self, deposit_id: bytes, user_id_hash: bytes, amount: int, bank_ref: bytes) -> TxReceipt:
        return self.send("recordDeposit", deposit_id, user_id_hash, amount, bank_ref)

    def issue(self, serial: bytes, device: str, user_id_hash: bytes, cap: int, expires_at: int) -> TxReceipt:
        return self.send("issue", serial, to_checksum_address(device), user_id_hash, cap, expires_at)

    def renew(self, old_serial: bytes, statement: Any, device_signature: bytes, new_serial: bytes,
              new_money: int, expires_at: int) -> TxReceipt:
        return self.send("renew", old_serial, encode_balance_statement(statement), device_signature, new_serial,
                         new_money, expires_at)

    def register_policy(self, content_id: bytes, version: int, price: int, payees: Sequence[tuple[str, int]],
                        policy_hash: bytes) -> TxReceipt:
        encoded = [(to_checksum_address(a), int(bps)) for a, bps in payees]
        return self.send("registerPolicy", content_id, version, price, encoded, policy_hash)

    def settle(self, items: Sequence[SettlementItem], *, gas: int | None = None) -> TxReceipt:
        return self.send("settle", [encode_settlement_item(i) for i in items], gas=gas)

    def skip_range(self, skip: Any, device_signature: bytes, receiver_signature: bytes) -> TxReceipt:
        """`skipRange`: a withheld range (an offchain.core.messages.SkipRange) past the withhold window."""
        return self.send("skipRange", encode_skip_range(skip), device_signature, receiver_signature)

    def request_transfers(self, policy_ids: Sequence[bytes]) -> tuple[TxReceipt, list[bytes]]:
        """Returns the receipt and the request ids, in the contract's order (from the TransferRequested events)."""
        receipt = self.send("requestTransfers", list(policy_ids))
        events = self.contract.events.TransferRequested().process_receipt(receipt, errors=DISCARD)
        return receipt, [bytes(e["args"]["requestId"]) for e in events]

    def confirm_transfer(self, request_id: bytes, bank_ref: bytes) -> TxReceipt:
        return self.send("confirmTransfer", request_id, bank_ref)

    # reads -----------------------------------------------------------------------------------------------------
    # `block` (views the device and the SP decide on): a number pins the read (offchain.chain.views.FinalViews)
    def member(self, account: str, *, block: int | str = "latest") -> MemberInfo:
        r = self.call("member", to_checksum_address(account), block=block)
        return MemberInfo(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), bytes(r[6]))

    def revoked_at(self, account: str) -> int:
        """The block timestamp of `account`'s revocation (0 unless revoked)."""
        return int(self.call("revokedAt", to_checksum_address(account)))

    def held_fees(self, receiver: str) -> int:
        """Fees of ranges skipped for `receiver` that no policy has been credited with yet."""
        return int(self.call("heldFees", to_checksum_address(receiver)))

    def is_active(self, account: str, role: int, *, block: int | str = "latest") -> bool:
        return bool(self.call("isActive", to_checksum_address(account), int(role), block=block))

    def issue_log(self, serial: bytes, *, block: int | str = "latest") -> IssueLogInfo:
        r = self.call("issueLog", serial, block=block)
        return IssueLogInfo(serial, r[0], bytes(r[1]), r[2], r[3], r[4], r[5], r[6], r[7])

    def policy(self, policy_id: bytes, *, block: int | str = "latest") -> PolicyInfo:
        r = self.call("policy", policy_id, block=block)
        payees = tuple((to_checksum_address(a), int(b)) for a, b in r[7])
        return PolicyInfo(policy_id, bytes(r[0]), r[1], r[2], r[3], bytes(r[4]), r[5], r[6], payees)

    def latest_version(self, content_id: bytes) -> int:
        return int(self.call("latestVersion", content_id))

    def user_funds(self, user_id_hash: bytes) -> UserFunds:
        deposited, allocated = self.call("userFunds", user_id_hash)
        return UserFunds(deposited, allocated)

    def transfer_request(self, request_id: bytes) -> TransferRequestInfo:
        r = self.call("transferRequest", request_id)
        return TransferRequestInfo(request_id, r[0], r[1], r[2], bytes(r[3]))

    def domain_separator(self) -> bytes:
        return bytes(self.call("domainSeparator"))


def node_refusal(exc: BaseException) -> tuple[str, int | None] | None:
    """(message, JSON-RPC code) when `exc` is the node's own answer refusing a request (a JSON-RPC error object,
    or HTTP 4xx such as 413 for a request over its size limit); None for no answer at all."""
    from requests import HTTPError
    from web3.exceptions import Web3RPCError

    if isinstance(exc, Web3RPCError):
        error = (exc.rpc_response or {}).get("error") if isinstance(exc.rpc_response, dict) else None
        if isinstance(error, dict):
            code = error.get("code")
            return str(error.get("message", exc)), code if isinstance(code, int) else None
        return str(exc), None
    if isinstance(exc, ValueError) and exc.args and isinstance(exc.args[0], dict) and "code" in exc.args[0]:
        code = exc.args[0].get("code")
        return str(exc.args[0].get("message", exc)), code if isinstance(code, int) else None
    response = getattr(exc, "response", None)
    if isinstance(exc, HTTPError) and response is not None and 400 <= response.status_code < 500:
        return f"HTTP {response.status_code} {response.reason}", None
    return None

__all__ = ["ClearhouseChain", "ZERO_BYTES32", "node_refusal"]
