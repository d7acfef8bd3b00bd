"""A device's home folder for offline tests of the real `clearhouse device use` path: keystore, settings file,
a wallet with a CC-signed issue log installed, and one downloaded container with its wrapped key (what
`DeviceClient.download` writes). Nothing here talks to a network; the chain and services are never reached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from offchain.core.messages import Domain, IssueLog, sign
from offchain.device.secure_module import DeviceKeys, KdfParams, SecureModule, cc_verify_fn, create_keystore
from offchain.trust.container import Payee, Policy, package, policy_hash, wrap_content_key

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "cd" * 20)
PASSPHRASE = "device passphrase"
CONTENT_ID = bytes.fromhex("c1" * 32)
CONTENT = b"the film, decrypted" * 10
SERIAL = bytes.fromhex("5e" * 32)
Member = Any  # tests/offchain/conftest.py Member


@dataclass(frozen=True)
class DeviceHome:
    settings_path: Path
    keystore_path: Path
    wallet_path: Path
    content_dir: Path
    deployment_path: Path


def write_deployment(path: Path, domain: Domain) -> Path:
    path.write_text(json.dumps({"network": "offline-test", "chain_id": domain.chain_id, "deploy_block": 0,
                                "authority": "0x" + "00" * 20,
                                "contracts": {"Clearhouse": {"address": domain.verifying_contract, "abi": []}}}))
    return path


def device_home(root: Path, authority: Any, device: Member, cc: Member, provider: Member, receiver: Member, *,
                cap: int, price: int, domain: Domain = DOMAIN, expires_at: int = 4_000_000_000) -> DeviceHome:
    """Provision `device` under `root` with an issue log of `cap` and one downloaded content of `price`."""
    root.mkdir(parents=True, exist_ok=True)
    member_id = device.credentials.member_id
    keystore, wallet = root / "keystore.json", root / "wallet.db"
    create_keystore(keystore, PASSPHRASE, DeviceKeys(member_id, device.eth_key, device.credentials.key_pem),
                    KdfParams(n=2**4))
    crl = root / "crl.pem"
    crl.write_bytes(authority.crl_pem())
    deployment = write_deployment(root / "deployment.json", domain)
    settings = root / "device.json"
    settings.write_text(json.dumps({
        "member_id": member_id, "cert_path": str(device.cert_path), "key_path": str(device.key_path),
        "ca_path": str(device.ca_path), "crl_path": str(crl), "deployment_path": str(deployment),
        "rpc_url": "http://127.0.0.1:9", "sp_url": "https://127.0.0.1:9", "cc_url": "https://127.0.0.1:9",
        "wallet_path": str(wallet), "keystore_path": str(keystore)}))
    module = SecureModule.open(keystore, wallet, PASSPHRASE)
    try:
        log = IssueLog(serial=SERIAL, device=device.address, user_id_hash=sha256(b"alice").digest(), cap=cap,
                       expires_at=expires_at, previous_serial=bytes(32), carried=0)
        module.install_issue_log(log, sign(log, domain, cc.eth_key), cc_verify_fn(domain, cc.address))
    finally:
        module.close()
    content_dir = root / "content"
    content_dir.mkdir()
    policy = Policy(CONTENT_ID, 1, price, (Payee(provider.address, 10_000),), provider.address)
    blob, key = package(CONTENT, CONTENT_ID, policy, provider.credentials)
    (content_dir / f"{CONTENT_ID.hex()}-1.chsc").write_bytes(blob)
    wrapped = wrap_content_key(key, CONTENT_ID, device.cert_pem, member_id)
    (content_dir / f"{CONTENT_ID.hex()}-1.key.json").write_text(json.dumps({
        "wrapped_key": wrapped.to_json(), "receiver": receiver.address,
        "policy_hash": "0x" + policy_hash(policy).hex(), "owner": provider.address}))
    return DeviceHome(settings, keystore, wallet, content_dir, deployment)


def wallet_state(home: DeviceHome) -> tuple[int, int, int]:
    """(spent, next seq, pending usage logs) read from the wallet file itself."""
    module = SecureModule.open(home.keystore_path, home.wallet_path, PASSPHRASE)
    try:
        balance = module.balance()
        return balance.spent, balance.next_seq, balance.pending_count
    finally:
        module.close()
