"""The SP keys usage rows and continuity by (device, serial) as well as by batch (issue 9, item 3), driven on the
agent directly (ServiceProvider.accept_usage, no chain wired: the case where the serial-owner check cannot help).

The `UsageBatch` digest does not cover the signer, so a copy of a batch under another signer or another signature
is a DuplicateMessage without `highest_received` (the device never takes it as an ack), never the first
uploader's receipt; and rows another device stored for a serial never block that serial's own device.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, select

from offchain.core.errors import DuplicateMessage, SequenceError
from offchain.core.messages import Domain, UsageBatch, UsageLog, address_from_public_key, policy_id, sign
from offchain.core.types import Role
from offchain.service_provider import store as sp
from offchain.service_provider.agent import ServiceProvider, VerifiedUpload
from offchain.storage import session_scope
from offchain.trust.certs import MemberIdentity

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "ab" * 20)
SP_KEY, OWNER_KEY, THIEF_KEY = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
CATALOG_KEY = b"\x09" * 32
CONTENT_ID, PRICE = b"\xc0" * 32, 5
SERIAL = b"\x5e" * 32


def address(key: bytes) -> str:
    import coincurve

    return address_from_public_key(coincurve.PrivateKey(key).public_key.format(compressed=False))


def identity(key: bytes, name: str) -> MemberIdentity:
    return MemberIdentity(member_id=name, role=Role.DEVICE, eth_address=address(key), fingerprint=name.encode() * 2,
                          serial_number=1, not_after=2**31)


@pytest.fixture
def provider(engine: Engine) -> ServiceProvider:
    with session_scope(engine) as session:
        sp.add_catalog_item(session, content_id=CONTENT_ID, version=1, container=b"c",
                            sealed_key=sp.seal_content_key(AESGCM(CATALOG_KEY), CONTENT_ID, 1, b"k" * 32),
                            policy_json={"price": PRICE, "title": "t"}, policy_hash=bytes(32), now=1)
    return ServiceProvider(engine=engine, domain=DOMAIN, private_key=SP_KEY, cert_pem=b"", verifier=None,  # type: ignore[arg-type]
                           catalog_key=CATALOG_KEY, clock=lambda: 1_000)


def batch_of(provider: ServiceProvider, first_seq: int, count: int, used_at: int = 500) -> UsageBatch:
    return UsageBatch.from_logs([UsageLog(serial=SERIAL, seq=seq, policy_id=policy_id(CONTENT_ID, 1), fee=PRICE,
                                          receiver=provider.address, used_at=used_at)
                                 for seq in range(first_seq, first_seq + count)])


def upload(batch: UsageBatch, key: bytes, name: str, *, signature: bytes | None = None) -> VerifiedUpload:
    logs = tuple(batch.logs())
    return VerifiedUpload(batch, signature or sign(batch, DOMAIN, key), logs,
                          tuple(sign(item, DOMAIN, key) for item in logs), identity(key, name), f"cert of {name}")


def test_same_batch_under_another_signer_is_duplicate_never_the_first_uploaders_ack(
        provider: ServiceProvider, engine: Engine) -> None:
    batch = batch_of(provider, 0, 2)
    ack = provider.accept_usage(upload(batch, OWNER_KEY, "owner"))
    assert provider.accept_usage(upload(batch, OWNER_KEY, "owner")) == ack  # positive control: the exact replay
    with pytest.raises(DuplicateMessage) as copied:  # the thief's copy: same digest, its own signature
        provider.accept_usage(upload(batch, THIEF_KEY, "thief"))
    assert (copied.value.serial, copied.value.first_seq, copied.value.kind) == (SERIAL, 0, "UsageBatch")
    assert copied.value.fields.get("highest_received") is None  # nothing a device could read as an ack
    with session_scope(engine) as session:  # only the owner's batch and logs are stored
        assert [r.device for r in session.scalars(select(sp.SpBatch))] == [address(OWNER_KEY)]
        assert {r.device for r in session.scalars(select(sp.SpUsageLog))} == {address(OWNER_KEY)}


def test_same_batch_and_signer_under_another_signature_is_duplicate(provider: ServiceProvider) -> None:
    batch = batch_of(provider, 0, 1)
    honest = upload(batch, OWNER_KEY, "owner")
    provider.accept_usage(honest)
    forged = bytearray(honest.batch_signature)
    forged[10] ^= 0xFF
    with pytest.raises(DuplicateMessage) as caught:
        provider.accept_usage(upload(batch, OWNER_KEY, "owner", signature=bytes(forged)))
    assert caught.value.fields.get("highest_received") is None


def test_thiefs_batch_stored_first_is_refused_to_the_owner_as_duplicate_not_acked(provider: ServiceProvider) -> None:
    """The review's variant: the thief uploads the owner's first batch first. The owner's upload of it is then
    refused (DuplicateMessage, no highest_received), never answered with the thief's receive log."""
    batch = batch_of(provider, 0, 1)
    thief_ack = provider.accept_usage(upload(batch, THIEF_KEY, "thief"))
    with pytest.raises(DuplicateMessage) as caught:
        provider.accept_usage(upload(batch, OWNER_KEY, "owner"))
    assert caught.value.fields.get("highest_received") is None
    assert thief_ack.receive_log_id not in str(caught.value.fields)


def test_rows_of_another_device_never_block_the_serials_own_device(provider: ServiceProvider,
                                                                    engine: Engine) -> None:
    """Continuity is per (device, serial): a squatter's logs 0..2 of the serial (another batch than the owner's)
    neither make the owner's seq 0 a duplicate nor its seq 1 a gap."""
    provider.accept_usage(upload(batch_of(provider, 0, 3, used_at=400), THIEF_KEY, "thief"))
    first = provider.accept_usage(upload(batch_of(provider, 0, 1), OWNER_KEY, "owner"))
    assert first.acked_through_seq == 0
    assert provider.accept_usage(upload(batch_of(provider, 1, 2), OWNER_KEY, "owner")).acked_through_seq == 2
    with pytest.raises(SequenceError) as gap:  # and the owner's own continuity still holds
        provider.accept_usage(upload(batch_of(provider, 5, 1), OWNER_KEY, "owner"))
    assert (gap.value.expected, gap.value.got) == (3, 5)
    with pytest.raises(DuplicateMessage) as overlap:
        provider.accept_usage(upload(batch_of(provider, 2, 1, used_at=600), OWNER_KEY, "owner"))
    assert overlap.value.highest_received == 2
    with session_scope(engine) as session:
        devices = sorted((r.device, r.first_seq) for r in session.scalars(select(sp.SpBatch)))
    assert devices == sorted([(address(THIEF_KEY), 0), (address(OWNER_KEY), 0), (address(OWNER_KEY), 1)])
