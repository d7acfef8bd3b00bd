"""Content keys are wrapped to the device's CA-attested agreement key, through the real SP (issue 10 item 4).

Alice's phone downloads a container; with only its TLS key file (key.pem) and the downloaded files, no
passphrase, the content key does not unwrap; with the keystore and passphrase the use succeeds. The SP refuses a
download without an attestation, with another device's attestation, or with one it did not sign, after the same
client downloaded with its own (the positive control).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from offchain.content_provider.publisher import content_id_for
from offchain.core.errors import IdentityMismatch, MalformedMessage, UntrustedCertificate
from offchain.core.types import to_hex
from offchain.trust.container import WrappedKey, derive_kek

Flow = Any  # tests/services/conftest.py Flow
NAME = "agreement-film"


def attestation_of(flow: Flow, member_id: str) -> dict[str, Any]:
    """The public attestation in a device's keystore (readable without the passphrase)."""
    keystore = flow.consortium.member(member_id).directory / "keystore.json"
    return dict(json.loads(keystore.read_text())["agreement_attestation"])


@pytest.fixture(scope="module")
def downloaded(flow: Flow) -> Any:
    flow.deposit("dep-agreement", "alice", 1_000)
    flow.publish(NAME, price=100)
    device = flow.device("alice-phone")
    device.request_issue_log(500)
    device.download(content_id_for(NAME), 1)
    return device


def test_tls_key_file_alone_does_not_unwrap_the_downloaded_content_key(flow: Flow, downloaded: Any) -> None:
    meta = json.loads(downloaded._key_path(content_id_for(NAME), 1).read_text())
    wrapped = WrappedKey.from_json(meta["wrapped_key"])
    key_pem = flow.consortium.member("alice-phone").key_path.read_bytes()  # what a thief copies without root
    tls_key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    epk = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), wrapped.ephemeral_public_key)
    kek = derive_kek(tls_key.exchange(ec.ECDH(), epk), wrapped.ephemeral_public_key, wrapped.info())
    with pytest.raises(InvalidTag):
        AESGCM(kek).decrypt(wrapped.nonce, wrapped.ciphertext, wrapped.info())
    assert wrapped.device_key_fingerprint == downloaded.module.agreement_fingerprint


def test_keystore_and_passphrase_open_it(flow: Flow, downloaded: Any) -> None:
    assert downloaded.use(content_id_for(NAME), 1) == NAME.encode() * 100


@pytest.mark.parametrize("case", ["own", "missing", "another device's", "not the root's"])
def test_sp_wraps_only_to_the_callers_attested_key(flow: Flow, downloaded: Any, case: str) -> None:
    own = attestation_of(flow, "alice-phone")
    bob = attestation_of(flow, "bob-tablet")
    body: dict[str, Any] = {"content_id": to_hex(content_id_for(NAME)), "version": 1}
    agreement = {"own": own, "missing": None, "another device's": bob,
                 "not the root's": {**own, "signature": bob["signature"]}}[case]
    if agreement is not None:
        body["agreement"] = agreement
    client = flow.services.client("alice-phone", "sp")
    if case == "own":
        answer = client.post("/v1/downloads", body)
        assert WrappedKey.from_json(answer["wrapped_key"]).device_key_fingerprint == \
            downloaded.module.agreement_fingerprint
        return
    expected = {"missing": MalformedMessage, "another device's": IdentityMismatch,
                "not the root's": UntrustedCertificate}[case]
    with pytest.raises(expected) as info:
        client.post("/v1/downloads", body)
    assert type(info.value) is expected
    if case == "missing":
        assert info.value.fields["field"] == "agreement"
