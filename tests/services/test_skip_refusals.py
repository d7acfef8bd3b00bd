"""The CC's checks on a SkipRange request before it sends `skipRange` (offchain/clearing_center/skips.py), on real
signed envelopes and certificates: each tampered request is refused with its named error, after the same
device's honest request passes the same check (positive control). `verify_skip` sends nothing, so no chain time
passes; the chain's own checks (window, signatures) are in tests/services/test_revoked_withholding_sp.py and
tests/contracts/test_revoked_and_withholding_sp.py.
"""

from __future__ import annotations

import pytest
from test_revoked_withholding_sp import _ack, _batch, _setup, world  # noqa: F401 - world is the fixture

from offchain.clearing_center.skips import SkipRequest, verify_skip
from offchain.core.errors import IdentityMismatch, MalformedMessage
from offchain.core.messages import SkipRange
from offchain.trust.certs import Envelope


def _request(world, *, ack_sp: str = "provider", ack_batch_of: str = "withheld", skip_as_ack: bool = False,
             ack_as_skip: bool = False) -> tuple[SkipRequest, bytes]:
    serial, _bob, _worker = _setup(world)
    withheld, _sig = _batch(world, serial, 0, 2, "provider")
    other, _other_sig = _batch(world, serial, 2, 1, "provider")
    acked = {"withheld": withheld, "other": other}[ack_batch_of]
    ack = _ack(world, acked, ack_sp)
    skip = SkipRange(serial=serial, first_seq=0, count=2, receiver=withheld.receiver, total=withheld.total,
                     usage_batch=withheld.struct_hash(), received_at=ack.decode().received_at)
    skip_env = Envelope.seal(skip, world.domain, world.env.actors["device"].key, world.creds["device"].cert_pem)
    skip_json, ack_json = skip_env.to_json(), ack.to_json()
    if skip_as_ack:  # the device sends the SP's receive log where its SkipRange belongs
        skip_json = Envelope.seal(ack.decode(), world.domain, world.env.actors["device"].key,
                                  world.creds["device"].cert_pem).to_json()
    if ack_as_skip:  # and its own SkipRange where the SP's ack belongs
        ack_json = skip_env.to_json()
    return SkipRequest(skip_range=skip_json, receive_log=ack_json), serial


def test_skip_request_of_the_serials_device_passes_the_check(world) -> None:
    request, serial = _request(world)
    skip, device_sig, receiver_sig = verify_skip(request, world.verifier(), world.domain, world.peers["device"])
    assert (skip.serial, skip.first_seq, skip.count) == (serial, 0, 2)
    assert len(device_sig) == 65 and len(receiver_sig) == 65


def test_skip_envelope_of_another_kind_refused(world) -> None:
    request, _ = _request(world, skip_as_ack=True)
    with pytest.raises(MalformedMessage) as refused:
        verify_skip(request, world.verifier(), world.domain, world.peers["device"])
    assert (refused.value.field, refused.value.type) == ("kind", "ReceiveLog")


def test_receive_log_envelope_of_another_kind_refused(world) -> None:
    request, _ = _request(world, ack_as_skip=True)
    with pytest.raises(MalformedMessage) as refused:
        verify_skip(request, world.verifier(), world.domain, world.peers["device"])
    assert (refused.value.field, refused.value.type) == ("kind", "SkipRange")


def test_receive_log_signed_by_another_sp_than_the_skip_names_refused(world) -> None:
    request, _ = _request(world, ack_sp="provider2")
    with pytest.raises(IdentityMismatch) as refused:
        verify_skip(request, world.verifier(), world.domain, world.peers["device"])
    assert refused.value.expected == world.peers["provider"].eth_address
    assert refused.value.got == world.peers["provider2"].eth_address


def test_receive_log_about_another_batch_refused(world) -> None:
    request, _ = _request(world, ack_batch_of="other")
    with pytest.raises(MalformedMessage) as refused:
        verify_skip(request, world.verifier(), world.domain, world.peers["device"])
    assert refused.value.reason == "receive log mismatch"
