"""Provisioning of a consortium on a dev chain: CA, member keys and certificates, on-chain registration, settings.

`provision` writes everything under `workdir` (CA, one directory per member, JSON settings per service, device
keystores) and returns a `Consortium` naming every path, address and URL. Security caveat: it funds accounts with
`anvil_setBalance` and stores keys unencrypted (0600) except device keystores: dev and test networks only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web3 import Web3

from offchain.trust import keys
from offchain.trust.ca import CertificateAuthority, MemberCredentials
from offchain.chain import ClearhouseChain, Deployment, free_port
from offchain.core.messages import Domain, Role, address_from_public_key, keccak

DEV_BALANCE_WEI = 10**21
DEFAULT_PASSPHRASE = "clearhouse-dev"


@dataclass(frozen=True)
class MemberSpec:
    member_id: str
    role: Role
    user_id: str = ""  # devices only: the user the device belongs to


DEFAULT_MEMBERS: tuple[MemberSpec, ...] = (
    MemberSpec("cc", Role.CLEARING_CENTER), MemberSpec("sp", Role.SERVICE_PROVIDER), MemberSpec("bank", Role.BANK),
    MemberSpec("studio", Role.CONTENT_PROVIDER), MemberSpec("alice-phone", Role.DEVICE, user_id="alice"),
)


@dataclass(frozen=True)
class Member:
    """One provisioned member: its files and addresses (keys are read from disk when needed)."""

    member_id: str
    role: Role
    eth_address: str
    directory: Path
    cert_path: Path
    key_path: Path
    eth_key_path: Path  # the hex key, or (pkcs11) a marker naming the token and key label
    user_id: str = ""
    hsm: keys.Pkcs11Config | None = None  # set when the member's signing key lives in a PKCS#11 token

    def eth_private_key(self) -> bytes:
        if self.hsm is not None:
            raise keys.HsmError(f"{self.member_id}'s signing key is in token {self.hsm.token_label!r}: use "
                                "signing_key()", member_id=self.member_id, token_label=self.hsm.token_label)
        return bytes.fromhex(self.eth_key_path.read_text().strip().removeprefix("0x"))

    def signing_key(self) -> bytes | keys.Signer:
        """What the chain client and `messages.sign` take: the key bytes, or the token's Signer."""
        if self.hsm is not None:
            return keys.open_secp256k1(self.hsm, self.member_id)
        return self.eth_private_key()

    def credentials(self) -> MemberCredentials:
        return MemberCredentials(self.member_id, self.role, self.eth_address, self.cert_path.read_bytes(),
                                 self.key_path.read_bytes())


@dataclass(frozen=True)
class Consortium:
    """Everything a test or the demo needs to run and talk to the services of one provisioned consortium."""

    workdir: Path
    ca_dir: Path
    root_path: Path
    crl_path: Path
    deployment_path: Path
    rpc_url: str
    domain: Domain
    members: dict[str, Member]
    urls: dict[str, str]  # "cc", "sp", "bank" -> https://127.0.0.1:<port>
    settings_paths: dict[str, Path]  # "cc", "sp", "bank" and every device member id -> JSON settings file
    metrics_urls: dict[str, str] = field(default_factory=dict)  # "cc", "sp", "bank" -> http://127.0.0.1:<port>
    passphrase: str = DEFAULT_PASSPHRASE
    extra: dict[str, Any] = field(default_factory=dict)
    hsm: keys.Pkcs11Config | None = None  # the token of the CA root, the authority and the HSM members

    def member(self, member_id: str) -> Member:
        return self.members[member_id]

    def of_role(self, role: Role) -> list[Member]:
        return [m for m in self.members.values() if m.role == role]

    def ca(self) -> CertificateAuthority:
        return keys.load_ca(self.ca_dir, pin=self.hsm.pin if self.hsm else None)


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (`free_port` never hands one out twice)."""
    return [free_port() for _ in range(count)]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _new_eth_key() -> tuple[bytes, str]:
    import coincurve

    key = coincurve.PrivateKey()
    return key.secret, address_from_public_key(key.public_key.format(compressed=False))


def anvil_fund(w3: Web3) -> Callable[[str], None]:
    """Give an address gas on a dev node (anvil_setBalance); a Clique network passes its faucet instead."""
    return lambda address: w3.provider.make_request("anvil_setBalance",  # type: ignore[arg-type]
                                                    [address, hex(DEV_BALANCE_WEI)])


def create_member(ca: CertificateAuthority, authority: ClearhouseChain, w3: Web3, workdir: Path,
                  spec: MemberSpec, *, valid_days: int = 365, hsm: keys.Pkcs11Config | None = None,
                  fund: Callable[[str], None] | None = None) -> Member:
    """Keys, certificate, funding and on-chain registration of one member (with `hsm`, its signing key is
    generated in that token, non-extractable, labelled with the member id)."""
    directory = workdir / "members" / spec.member_id
    directory.mkdir(parents=True, exist_ok=True)
    if hsm is None:
        eth_key, address = _new_eth_key()
        eth_key_path = directory / "eth.key"
        _write_private(eth_key_path, eth_key.hex())
    else:
        address = keys.generate_secp256k1(hsm, spec.member_id).address
        eth_key_path = directory / "eth.key.pkcs11.json"
        keys.write_pkcs11_marker(eth_key_path, hsm, spec.member_id, "secp256k1")
    creds = ca.issue_member(spec.member_id, spec.role, address, valid_days=valid_days, user_id=spec.user_id or None)
    cert_path, key_path = creds.write(directory)
    (fund or anvil_fund(w3))(address)
    authority.register_member(address, int(spec.role), keccak(spec.member_id.encode()), creds.fingerprint,
                              creds.valid_from, creds.valid_until,
                              user_id_hash=keccak(spec.user_id.encode()) if spec.user_id else bytes(32))
    return Member(spec.member_id, spec.role, address, directory, cert_path, key_path, eth_key_path, spec.user_id,
                  hsm)


def _service_settings(member: Member, consortium_paths: dict[str, Any], port: int) -> dict[str, Any]:
    if member.hsm is None:
        key_settings: dict[str, Any] = {"eth_key_path": str(member.eth_key_path)}
    else:  # dev consortium: the PIN sits in the 0600 settings file; production gives CLEARHOUSE_PKCS11_PIN
        key_settings = {"key_backend": "pkcs11", "pkcs11_module": str(member.hsm.module),
                        "pkcs11_token_label": member.hsm.token_label, "pkcs11_pin": member.hsm.pin,
                        "pkcs11_key_label": member.member_id}
    return {
        "member_id": member.member_id, "host": "127.0.0.1", "port": port, "cert_path": str(member.cert_path),
        "key_path": str(member.key_path), "ca_path": str(consortium_paths["root"]),
        "crl_path": str(consortium_paths["crl"]), **key_settings,
        "rpc_url": consortium_paths["rpc_url"], "deployment_path": str(consortium_paths["deployment"]),
        "database_url": f"sqlite:///{member.directory / 'service.db'}",
        **consortium_paths.get("chain_settings", {}),  # rpc_urls, confirmations (a consortium network)
    }


def write_settings(workdir: Path, members: dict[str, Member], paths: dict[str, Any], ports: dict[str, int],
                   metrics_ports: dict[str, int] | None = None) -> tuple[dict[str, str], dict[str, Path]]:
    """One JSON settings file per service (and per device); returns (urls, settings paths). `metrics_ports`
    turns on each service's plain-HTTP /healthz and /metrics listener (offchain/transport/ops.py)."""
    urls = {name: f"https://127.0.0.1:{port}" for name, port in ports.items()}
    metrics_ports = metrics_ports or {}
    by_role = {m.role: m for m in members.values()}
    extra = {
        "cc": {"bank_url": urls["bank"], "settle_interval_s": 0.5, "transfer_interval_s": 2.0},
        "sp": {"cc_url": urls["cc"], "forward_interval_s": 0.3, "catalog_key": os.urandom(32).hex()},
        "bank": {"cc_url": urls["cc"]},
    }
    roles = {"cc": Role.CLEARING_CENTER, "sp": Role.SERVICE_PROVIDER, "bank": Role.BANK}
    settings_paths: dict[str, Path] = {}
    for name, role in roles.items():
        if role not in by_role:
            continue
        data = {**_service_settings(by_role[role], paths, ports[name]), **extra[name]}
        if name in metrics_ports:
            data["metrics_port"] = metrics_ports[name]
        settings_paths[name] = workdir / f"{name}.json"
        _write_private(settings_paths[name], json.dumps(data, indent=2))
    for member in members.values():
        if member.role == Role.DEVICE:
            settings_paths[member.member_id] = _write_device_settings(workdir, member, paths, urls)
    return urls, settings_paths


def _write_device_settings(workdir: Path, member: Member, paths: dict[str, Any], urls: dict[str, str]) -> Path:
    data = {**_service_settings(member, paths, 0), "sp_url": urls["sp"], "cc_url": urls["cc"],
            "wallet_path": str(member.directory / "wallet.db"), "keystore_path": str(member.directory / "keystore.json")}
    data.pop("database_url")
    path = workdir / f"device-{member.member_id}.json"
    _write_private(path, json.dumps(data, indent=2))
    return path


def create_device_keystore(member: Member, passphrase: str, *, fast_kdf: bool, ca: CertificateAuthority) -> Path:
    """The device's encrypted keystore next to its other files: its eth key and a fresh P-256 agreement key that
    exists nowhere else (content keys are wrapped to it, not to the TLS key in key.pem), with the CA's attestation
    binding that key to the device's certificate (offchain.trust.agreement)."""
    from offchain.device.secure_module import device_keys_with_agreement, KdfParams, create_keystore

    path = member.directory / "keystore.json"
    keys = device_keys_with_agreement(ca, member.member_id, member.eth_private_key(), member.cert_path.read_bytes())
    create_keystore(path, passphrase, keys, KdfParams(n=2**4) if fast_kdf else KdfParams())
    return path


def provision(workdir: Path, w3: Web3, deployment: Deployment, authority_key: bytes | keys.Signer, *,
              members: Sequence[MemberSpec] = DEFAULT_MEMBERS, rpc_url: str | None = None,
              passphrase: str = DEFAULT_PASSPHRASE, fast_kdf: bool = False, hsm: keys.Pkcs11Config | None = None,
              hsm_members: frozenset[str] = frozenset({"cc", "sp", "bank"}),
              fund: Callable[[str], None] | None = None, rpc_urls: Sequence[str] = (),
              confirmations: int | None = None) -> Consortium:
    """Create the CA and every member under `workdir`, register them on chain, write settings; returns it all.

    With `hsm`, the CA root key is generated in that token and so are the signing keys of `hsm_members`;
    `authority_key` is then usually the token's Signer too (see `offchain.operator.demo` --hsm). `fund` gives a
    member gas (default anvil_setBalance); `rpc_urls` and `confirmations` go into every settings file."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ca = keys.create_ca(workdir / "ca", hsm)
    # The authority is the CA's Ethereum key: kept beside the CA's root key (file permissions only, like it).
    if isinstance(authority_key, (bytes, bytearray)):
        _write_private(ca.directory / "authority-eth.key", bytes(authority_key).hex())
    elif hsm is not None and isinstance(authority_key, keys.Pkcs11Signer):
        keys.write_pkcs11_marker(ca.directory / "authority-eth.pkcs11.json", hsm, authority_key.label, "secp256k1")
    deployment_path = deployment.write(workdir / "deployment.json")
    authority = ClearhouseChain(w3, deployment, authority_key)
    created = {spec.member_id: create_member(ca, authority, w3, workdir, spec,
                                             hsm=hsm if spec.member_id in hsm_members else None, fund=fund)
               for spec in members}
    for member in created.values():
        if member.role == Role.DEVICE:
            create_device_keystore(member, passphrase, fast_kdf=fast_kdf, ca=ca)
    rpc = rpc_url or str(getattr(w3.provider, "endpoint_uri", "http://127.0.0.1:8545"))
    chain_settings: dict[str, Any] = {}
    if rpc_urls:
        chain_settings["rpc_urls"] = list(rpc_urls)
    if confirmations is not None:
        chain_settings["confirmations"] = confirmations
    paths = {"root": ca.root_path, "crl": ca.directory / "crl.pem", "deployment": deployment_path, "rpc_url": rpc,
             "chain_settings": chain_settings}
    picked = free_ports(6)  # service ports and ops listeners (/healthz, /metrics), distinct
    ports, metrics_ports = dict(zip(("cc", "sp", "bank"), picked[:3])), dict(zip(("cc", "sp", "bank"), picked[3:]))
    urls, settings_paths = write_settings(workdir, created, paths, ports, metrics_ports)
    return Consortium(workdir=workdir, ca_dir=ca.directory, root_path=ca.root_path, crl_path=paths["crl"],
                      deployment_path=deployment_path, rpc_url=rpc, domain=deployment.domain, members=created,
                      urls=urls, settings_paths=settings_paths, passphrase=passphrase, hsm=hsm,
                      metrics_urls={name: f"http://127.0.0.1:{port}" for name, port in metrics_ports.items()})


__all__ = ["MemberSpec", "Member", "Consortium", "DEFAULT_MEMBERS", "provision", "create_member", "free_port",
           "free_ports", "revoke_member"]


def revoke_member(ca: CertificateAuthority, authority: ClearhouseChain, member_id: str) -> list[str]:
    """Revoke a member everywhere: its addresses on chain first, then its certificates on the CRL (a chain error
    leaves the CRL untouched; `offchain.operator.revocation` does it, and releases a device's logs on request).

    Returns the revoked addresses. The CRL file is rewritten by the CA; services re-read it on each handshake
    check, and the on-chain revocation makes every contract call by or signed by the member fail at once.
    """
    from offchain.operator.revocation import revoke_member as revoke_in_order

    return sorted(revoke_in_order(ca, authority, member_id).on_chain)
