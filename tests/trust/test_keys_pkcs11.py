"""secp256k1 signing keys and the CA's root key in a PKCS#11 token (SoftHSM2): generated non-extractable, every
signature low-s and recovering to the token's public key, transactions the chain accepts, certificates and CRLs
that verify against the token's root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account
from web3 import Web3

from offchain.core import messages
from offchain.core.errors import HsmError
from offchain.core.messages import SECP256K1_HALF_N, Role, address_from_public_key
from offchain.trust import keys
from offchain.trust.keys import FileSigner, Signer, generate_secp256k1, open_secp256k1

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def test_generated_key_is_sensitive_and_not_extractable(hsm, key_label) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    signer = generate_secp256k1(hsm, key_label)
    token = keys.open_token(hsm)
    private = token.find_key(key_label, ObjectClass.PRIVATE_KEY)
    assert private[Attribute.EXTRACTABLE] is False and private[Attribute.SENSITIVE] is True
    assert private[Attribute.NEVER_EXTRACTABLE] is True
    with pytest.raises(pkcs11.AttributeSensitive):
        private[Attribute.VALUE]
    with pytest.raises(HsmError):  # the CA-side wrapper refuses too
        keys.open_ec_key(hsm, key_label)
    assert signer.address == open_secp256k1(hsm, key_label).address  # positive control: the key is there


def test_generate_refuses_a_label_already_taken(hsm, key_label) -> None:
    generate_secp256k1(hsm, key_label)
    with pytest.raises(HsmError) as info:
        generate_secp256k1(hsm, key_label)
    assert info.value.fields["label"] == key_label


def test_digest_signature_recovers_to_token_address_and_is_low_s(hsm, key_label) -> None:
    signer = generate_secp256k1(hsm, key_label)
    assert isinstance(signer, Signer)
    for i in range(40):  # about half of raw token signatures are high s: 40 tries all but surely hit both
        digest = messages.keccak(i.to_bytes(4, "big"))
        signature = signer.sign_digest(digest)
        assert int.from_bytes(signature[32:64], "big") <= SECP256K1_HALF_N
        assert messages.recover_digest(digest, signature) == signer.address


def test_message_signed_through_the_token_verifies(hsm, key_label) -> None:
    signer = generate_secp256k1(hsm, key_label)
    vector = json.loads((VECTORS / "UsageLog.json").read_text())[0]
    domain, log = messages.Domain.from_json(vector["domain"]), messages.message_from_json("UsageLog", vector["message"])
    signature = messages.sign(log, domain, signer)
    assert messages.recover_digest(log.digest(domain), signature) == signer.address


def test_file_signer_matches_eth_account_and_messages_sign() -> None:
    key = os.urandom(32)
    signer = FileSigner(key)
    tx = {"to": "0x" + "11" * 20, "value": 5, "gas": 21_000, "nonce": 3, "chainId": 31337,
          "maxFeePerGas": 2 * 10**9, "maxPriorityFeePerGas": 10**9, "data": b""}
    assert signer.sign_transaction(tx) == Account.sign_transaction(tx, key)
    digest = os.urandom(32)
    assert signer.sign_digest(digest)[:64] == coincurve.PrivateKey(key).sign_recoverable(digest, hasher=None)[:64]


def test_transaction_signed_by_the_token_is_accepted_by_anvil(hsm, key_label, w3: Web3) -> None:
    signer = generate_secp256k1(hsm, key_label)
    w3.provider.make_request("anvil_setBalance", [signer.address, hex(10**20)])
    to = Account.create().address
    nonce = w3.eth.get_transaction_count(signer.address)
    base = {"to": to, "value": 12345, "gas": 21_000, "chainId": w3.eth.chain_id, "data": b""}
    typed = {**base, "nonce": nonce, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "from": signer.address}
    legacy = {**base, "nonce": nonce + 1, "gasPrice": 10**10}
    for tx in (typed, legacy):
        signed = signer.sign_transaction(tx)
        assert Account.recover_transaction(signed.raw_transaction) == signer.address
        receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction),
                                                      poll_latency=0.01)
        assert receipt["status"] == 1 and receipt["from"] == signer.address
        assert bytes(receipt["transactionHash"]) == bytes(signed.hash)
    assert w3.eth.get_balance(to) == 2 * 12345


def test_transaction_from_another_address_is_refused(hsm, key_label) -> None:
    signer = generate_secp256k1(hsm, key_label)
    with pytest.raises(HsmError):
        signer.sign_transaction({"from": Account.create().address, "to": "0x" + "11" * 20, "value": 0,
                                 "gas": 21_000, "nonce": 0, "chainId": 1, "gasPrice": 1})


def test_ca_with_root_key_in_token_issues_verifiable_certificates_and_crl(hsm, tmp_path) -> None:
    from offchain.trust.certs import CertificateVerifier

    ca = keys.create_ca(tmp_path / "ca", hsm, label="root-" + tmp_path.name[-20:])
    assert not (tmp_path / "ca" / "root.key.pem").exists()
    assert (tmp_path / "ca" / keys.CA_KEY_MARKER).is_file()
    assert "4321" not in (tmp_path / "ca" / keys.CA_KEY_MARKER).read_text()
    loaded = keys.load_ca(tmp_path / "ca", pin=hsm.pin)
    eth = address_from_public_key(coincurve.PrivateKey().public_key.format(compressed=False))
    creds = loaded.issue_member("sp-1", Role.SERVICE_PROVIDER, eth)
    verifier = CertificateVerifier(ca.root_pem, (tmp_path / "ca" / "crl.pem").read_bytes())
    assert verifier.verify(creds.cert_pem).member_id == "sp-1"
    loaded.revoke("sp-1")
    from offchain.core.errors import CertificateRevoked
    with pytest.raises(CertificateRevoked):
        CertificateVerifier(ca.root_pem, (tmp_path / "ca" / "crl.pem").read_bytes()).verify(creds.cert_pem)


def test_token_ca_key_never_reveals_itself(hsm, tmp_path) -> None:
    key = keys.generate_ec_key(hsm, "p256-" + tmp_path.name[-20:], ec.SECP256R1())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    with pytest.raises(HsmError):
        key.private_numbers()
    with pytest.raises(HsmError):
        key.private_bytes()


def test_refresh_crl_with_root_key_in_token_needs_the_pin(hsm, tmp_path, monkeypatch) -> None:
    from offchain.core.errors import ConfigError
    from offchain.trust.crl import refresh_crl

    keys.create_ca(tmp_path / "ca", hsm, label="crl-" + tmp_path.name[-20:])
    monkeypatch.delenv(keys.PIN_ENV, raising=False)
    with pytest.raises(ConfigError) as info:
        refresh_crl(tmp_path / "ca")
    assert info.value.fields["env"] == keys.PIN_ENV
    monkeypatch.setenv(keys.PIN_ENV, hsm.pin)
    assert refresh_crl(tmp_path / "ca").crl_number == 2


# A fresh process that loads the module and logs in when told to, then signs with the key and prints its address.
OPEN_AT_ONCE = """
import sys
from offchain.core import messages
from offchain.trust import keys
config = keys.Pkcs11Config(keys.softhsm_module(), sys.argv[1], sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
signer = keys.open_secp256k1(config, sys.argv[3])
digest = messages.keccak(b"at once")
assert messages.recover_digest(digest, signer.sign_digest(digest)) == signer.address
print(signer.address, flush=True)
"""


def test_services_that_open_one_token_at_once_all_find_it(hsm, key_label) -> None:
    """The CC, SP and bank of `demo --hsm` log in to one SoftHSM2 token as they start: ten processes released at
    the same moment, three times, each load the module, log in and sign (without the store lock about one in four
    got NoSuchToken or GeneralError)."""
    import subprocess
    import sys

    address = generate_secp256k1(hsm, key_label).address
    root = Path(__file__).resolve().parents[2]
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, hsm.token_label, hsm.pin, key_label],
                                  cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(10)]
        try:
            assert all(p.stdout.readline().strip() == "ready" for p in procs)
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [(p.communicate(timeout=120), p.returncode) for p in procs]
        finally:
            for p in procs:
                p.kill()
        failed = [err.strip().splitlines()[-1:] for (_, err), code in results if code != 0]
        assert failed == []
        assert [out.strip() for (out, _), _ in results] == [address] * 10
