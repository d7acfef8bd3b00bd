"""Fast (coincurve) and generic (eth-account) recovery agree, and both enforce the OZ ECDSA rules.

Tampered inputs come from factories: flipped bytes, high-s malleation, bad length or v, foreign domains and
the same fields signed as another type.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offchain.core.errors import (
    ClearhouseError,
    InvalidSignatureLength,
    InvalidSignatureS,
    InvalidSignatureV,
    SignatureError,
    SignerMismatch,
)
from offchain.core.messages import (
    MESSAGE_TYPES,
    SECP256K1_N,
    Domain,
    ReceiveLog,
    TransferRequest,
    UsageLog,
    recover,
    recover_generic,
    recover_many,
    sign,
    to_checksum_address,
    verify,
    verify_usage_logs,
)

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS = [v for path in sorted(VECTOR_DIR.glob("*.json")) for v in json.loads(path.read_text())]
DOMAIN = Domain(chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
DEVICE_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
ATTACKER_KEY = bytes.fromhex("8da4ef21b864d2cc526dbdb2a120bd2874c36c9d0a1fb7f8c63d7f7a8b41de8f")
DEVICE = Account.from_key(DEVICE_KEY).address
FAST_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def device_log() -> tuple[UsageLog, bytes]:
    log = UsageLog(serial=b"\x11" * 32, seq=3, policy_id=b"\x22" * 32, fee=250,
                   receiver="0x5878D3C46f19D3222C1Aa5083127E026501b07C3", used_at=1_750_000_000)
    return log, sign(log, DOMAIN, DEVICE_KEY)


def loaded(vector: dict[str, Any]) -> tuple[Any, Domain, bytes]:
    return (MESSAGE_TYPES[vector["type"]].from_json(vector["message"]), Domain.from_json(vector["domain"]),
            bytes.fromhex(vector["signature"][2:]))


def outcome(fn: Any, *args: Any) -> tuple[str, str]:
    """("ok", signer) or (error class name, "") so two paths can be compared."""
    try:
        return "ok", fn(*args)
    except SignatureError as exc:
        return type(exc).__name__, ""


def malleate(signature: bytes) -> bytes:
    """The other valid signature of the same digest: s' = n - s, v flipped."""
    s_value = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s_value).to_bytes(32, "big") + bytes((55 - signature[64],))


@pytest.mark.parametrize("index", range(len(VECTORS)))
def test_paths_agree_on_vector(index: int) -> None:
    message, domain, signature = loaded(VECTORS[index])
    assert recover(message, domain, signature) == recover_generic(message, domain, signature) \
        == VECTORS[index]["signer"]


@pytest.mark.parametrize("index", range(len(VECTORS)))
def test_high_s_malleation_rejected_on_both_paths(index: int) -> None:
    message, domain, signature = loaded(VECTORS[index])
    for path in (recover, recover_generic):
        with pytest.raises(InvalidSignatureS):
            path(message, domain, malleate(signature))


@given(index=st.integers(0, len(VECTORS) - 1), position=st.integers(0, 64), mask=st.integers(1, 255))
@FAST_SETTINGS
def test_paths_agree_on_flipped_signature_byte(index: int, position: int, mask: int) -> None:
    message, domain, signature = loaded(VECTORS[index])
    tampered = bytearray(signature)
    tampered[position] ^= mask
    fast = outcome(recover, message, domain, bytes(tampered))
    assert fast == outcome(recover_generic, message, domain, bytes(tampered))
    assert fast != ("ok", VECTORS[index]["signer"])


@given(index=st.integers(0, len(VECTORS) - 1), data=st.data())
@FAST_SETTINGS
def test_paths_agree_on_mutated_field(index: int, data: st.DataObject) -> None:
    vector = VECTORS[index]
    message, domain, signature = loaded(vector)
    field = data.draw(st.sampled_from(message.FIELDS))
    value = getattr(message, field.attr)
    if field.bits:
        mutated = data.draw(st.integers(0, (1 << field.bits) - 1).filter(lambda v: v != value))
    elif field.sol_type == "address":
        raw = data.draw(st.binary(min_size=20, max_size=20).filter(lambda b: b.hex() != value[2:].lower()))
        mutated = to_checksum_address("0x" + raw.hex())
    elif field.sol_type == "bytes32[]":
        mutated = value + (data.draw(st.binary(min_size=32, max_size=32)),)
    else:
        mutated = bytes([value[0] ^ 1]) + value[1:]
    try:
        tampered = replace(message, **{field.attr: mutated})
    except ClearhouseError:  # e.g. entries no longer fit the policies: not a constructible message
        return
    fast = recover(tampered, domain, signature)
    assert fast == recover_generic(tampered, domain, signature)
    assert fast != vector["signer"]
    with pytest.raises(SignerMismatch):
        verify(tampered, domain, signature, vector["signer"])


@pytest.mark.parametrize("length", [0, 64, 66, 130])
def test_wrong_length_rejected(device_log: tuple[UsageLog, bytes], length: int) -> None:
    log, signature = device_log
    bad = (signature * 3)[:length]
    for path in (recover, recover_generic):
        with pytest.raises(InvalidSignatureLength) as info:
            path(log, DOMAIN, bad)
        assert info.value.length == length


@pytest.mark.parametrize("v", [0, 1, 29, 255])
def test_bad_v_rejected(device_log: tuple[UsageLog, bytes], v: int) -> None:
    log, signature = device_log
    for path in (recover, recover_generic):
        with pytest.raises(InvalidSignatureV) as info:
            path(log, DOMAIN, signature[:64] + bytes((v,)))
        assert info.value.v == v


def test_zero_r_rejected_as_signature_error(device_log: tuple[UsageLog, bytes]) -> None:
    log, signature = device_log
    for path in (recover, recover_generic):
        with pytest.raises(SignatureError):
            path(log, DOMAIN, bytes(32) + signature[32:])


def test_verify_accepts_the_device(device_log: tuple[UsageLog, bytes]) -> None:
    log, signature = device_log
    verify(log, DOMAIN, signature, DEVICE)
    verify(log, DOMAIN, signature, DEVICE.lower())


@pytest.mark.parametrize("domain", [
    Domain(chain_id=1, verifying_contract=DOMAIN.verifying_contract),
    Domain(chain_id=31337, verifying_contract="0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"),
])
def test_other_domain_recovers_someone_else(device_log: tuple[UsageLog, bytes], domain: Domain) -> None:
    log, signature = device_log
    with pytest.raises(SignerMismatch) as info:
        verify(log, domain, signature, DEVICE)
    assert info.value.expected == DEVICE and info.value.got != DEVICE


def test_same_fields_in_another_type_rejected() -> None:
    # ReceiveLog(bytes32,address,uint64) and TransferRequest(bytes32,address,uint96) encode to the same three
    # words here; only the type hash tells them apart.
    receive = ReceiveLog(usage_batch=b"\x01" * 32, payer=DEVICE, received_at=77)
    request = TransferRequest(request_id=b"\x01" * 32, payee=DEVICE, amount=77)
    signature = sign(receive, DOMAIN, DEVICE_KEY)
    verify(receive, DOMAIN, signature, DEVICE)
    with pytest.raises(SignerMismatch):
        verify(request, DOMAIN, signature, DEVICE)
    assert recover_generic(request, DOMAIN, signature) != DEVICE


def test_forgery_by_attacker_rejected(device_log: tuple[UsageLog, bytes]) -> None:
    log, _ = device_log
    with pytest.raises(SignerMismatch) as info:
        verify(log, DOMAIN, sign(log, DOMAIN, ATTACKER_KEY), DEVICE)
    assert info.value.got == Account.from_key(ATTACKER_KEY).address


def test_sign_produces_low_s_and_v_27_or_28() -> None:
    for seq in range(40):
        signature = sign(replace_seq(seq), DOMAIN, DEVICE_KEY)
        assert int.from_bytes(signature[32:64], "big") <= SECP256K1_N // 2 and signature[64] in (27, 28)


def replace_seq(seq: int) -> UsageLog:
    return UsageLog(serial=b"\x11" * 32, seq=seq, policy_id=b"\x22" * 32, fee=1,
                    receiver="0x5878D3C46f19D3222C1Aa5083127E026501b07C3", used_at=0)


def test_verify_usage_logs_batch_and_index_of_forgery() -> None:
    logs = [replace_seq(seq) for seq in range(20)]
    signatures = [sign(log, DOMAIN, DEVICE_KEY) for log in logs]
    verify_usage_logs(logs, signatures, DOMAIN, DEVICE)
    assert recover_many(logs, DOMAIN, signatures) == [DEVICE] * 20
    signatures[7] = sign(logs[7], DOMAIN, ATTACKER_KEY)
    with pytest.raises(SignerMismatch) as info:
        verify_usage_logs(logs, signatures, DOMAIN, DEVICE)
    assert info.value.index == 7
    with pytest.raises(InvalidSignatureLength):
        recover_many(logs, DOMAIN, signatures[:-1])


def test_bench_verify_writes_both_rates(tmp_path: Path) -> None:
    from offchain.operator.bench import verify as bench_verify

    out = tmp_path / "verify.json"
    result = bench_verify.run(out_path=str(out), n=300, generic_n=100)
    assert json.loads(out.read_text()) == result
    # Which path is faster is the benchmark's finding, not a test's: only the shape of the result is checked.
    assert result["fast_per_s"] > 0 and result["generic_per_s"] > 0 and result["n_generic"] == 100
