"""Running a consortium by hand, step by step: a CA and the authority key (`ca init`), one member at a time
(`member add`: keys, certificate, on-chain registration, gas), the member list (certificate, CRL and chain side by
side), commented settings templates (`config init`) and a bank deposit.

The same steps `offchain.operator.provision` runs for the demo, one at a time, on any network: gas is granted only
on a dev chain (anvil), elsewhere a member without gas is reported with its address. Keys are written 0600.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offchain.core.errors import MemberSetupError, PathError, SettingError
from offchain.core.messages import Role, keccak
from offchain.operator.provision import DEV_BALANCE_WEI, _new_eth_key, _write_private

if TYPE_CHECKING:
    from offchain.chain.protocols import ChainReader

AUTHORITY_KEY_FILE = "authority-eth.key"


def _role(name: str) -> Role:
    try:
        return Role[name.upper().replace("-", "_")]
    except KeyError:
        choices = ", ".join(r.name.lower() for r in Role if r != Role.NONE)
        raise MemberSetupError(f"unknown role {name!r}; use one of {choices}", role=name) from None


# --- ca init -----------------------------------------------------------------------------------------------------
def init_ca(directory: Path) -> dict[str, str]:
    """A new CA (root key and certificate, empty CRL) and a new authority Ethereum key beside it; refuses to
    overwrite an existing CA. Returns the paths and the authority's address (deploy the contract with it)."""
    from eth_account import Account

    from offchain.trust import keys

    directory = Path(directory)
    if (directory / "index.json").exists() or (directory / "root.key.pem").exists():
        raise PathError(f"{directory} already holds a CA; choose another directory", directory=str(directory))
    _make_dir(directory)
    ca = keys.create_ca(directory)
    key, address = _new_eth_key()
    _write_private(directory / AUTHORITY_KEY_FILE, key.hex())
    assert Account.from_key(key).address == address
    return {"ca_dir": str(directory), "root": str(ca.root_path), "crl": str(directory / "crl.pem"),
            "authority_key_file": str(directory / AUTHORITY_KEY_FILE), "authority_address": address}


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PathError(f"cannot create the directory {directory}: {exc.strerror}; choose a writable path",
                        directory=str(directory)) from None


# --- member add --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AddedMember:
    member_id: str
    role: str
    eth_address: str
    directory: str
    cert_path: str
    key_path: str
    eth_key_path: str
    registered_tx: str
    balance_wei: int
    funded: bool
    keystore_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def is_dev_chain(w3: Any) -> bool:
    try:
        return "anvil" in str(w3.client_version).lower()
    except Exception:  # noqa: BLE001 - an unknown client is not a dev chain
        return False


def add_member(ca_dir: Path, workdir: Path, member_id: str, role_name: str, authority: Any, *,
               user_id: str = "", valid_days: int = 365, passphrase: str | None = None, fast_kdf: bool = False,
               echo: Callable[[str], None] = lambda _line: None) -> AddedMember:
    """Keys, certificate, on-chain registration and (dev chain) gas of one member under `workdir/members/<id>`.

    `authority` is the authority's ClearhouseChain. A device needs `user_id`, and `passphrase` for its keystore."""
    from offchain.trust import keys

    role = _role(role_name)
    if role == Role.DEVICE and not user_id:
        raise MemberSetupError("a device belongs to a user: pass --user", member_id=member_id, field="user")
    if role == Role.DEVICE and passphrase is None:
        raise MemberSetupError("a device keystore needs a passphrase: set CLEARHOUSE_PASSPHRASE (or run in a terminal)",
                               member_id=member_id, env="CLEARHOUSE_PASSPHRASE")
    ca = keys.load_ca(ca_dir)
    _fund_dev_authority(authority, echo)
    if any(entry["member_id"] == member_id for entry in ca.issued):
        raise MemberSetupError(f"the CA already issued a certificate to {member_id!r}; pick another id (or revoke it "
                               "and use a new one)", member_id=member_id)
    directory = Path(workdir) / "members" / member_id
    _make_dir(directory)
    eth_key, address = _new_eth_key()
    eth_key_path = directory / "eth.key"
    _write_private(eth_key_path, eth_key.hex())
    creds = ca.issue_member(member_id, role, address, valid_days=valid_days, user_id=user_id or None)
    cert_path, key_path = creds.write(directory)
    echo(f"certificate {cert_path} (valid until {creds.valid_until})")
    receipt = authority.register_member(address, int(role), keccak(member_id.encode()), creds.fingerprint,
                                        creds.valid_from, creds.valid_until,
                                        user_id_hash=keccak(user_id.encode()) if user_id else bytes(32))
    tx = _tx_hash(receipt)
    echo(f"registered on chain as {role.name.lower()} ({tx})")
    funded = False
    w3 = authority.w3
    if is_dev_chain(w3):
        w3.provider.make_request("anvil_setBalance", [address, hex(DEV_BALANCE_WEI)])
        funded = True
    balance = int(w3.eth.get_balance(address))
    echo(f"gas: {balance / 10**18:.4f} ETH" + (" (dev chain grant)" if funded else "") if balance else
         f"NO GAS: {member_id} ({address}) cannot send transactions until it is funded")
    keystore = None
    if role == Role.DEVICE:
        from offchain.device.secure_module import KdfParams, create_keystore, device_keys_with_agreement

        keystore_path = directory / "keystore.json"  # a dedicated agreement key, attested by the CA (not key.pem)
        create_keystore(keystore_path, passphrase or "",
                        device_keys_with_agreement(ca, member_id, eth_key, cert_path.read_bytes()),
                        KdfParams(n=2**4) if fast_kdf else KdfParams())
        keystore = str(keystore_path)
    return AddedMember(member_id, role.name.lower(), address, str(directory), str(cert_path), str(key_path),
                       str(eth_key_path), tx, balance, funded, keystore)


def _fund_dev_authority(authority: Any, echo: Callable[[str], None]) -> None:
    """On a dev chain, an authority without gas gets the dev grant (it pays for every registration)."""
    w3 = authority.w3
    if int(w3.eth.get_balance(authority.sender)) == 0:
        if not is_dev_chain(w3):
            raise SettingError(f"the authority {authority.sender} has no gas to register members: fund it first",
                               field="authority")
        w3.provider.make_request("anvil_setBalance", [authority.sender, hex(DEV_BALANCE_WEI)])
        echo(f"authority {authority.sender} had no gas: dev chain grant")


def _tx_hash(receipt: Any) -> str:
    value = receipt["transactionHash"] if isinstance(receipt, dict) or hasattr(receipt, "__getitem__") else receipt
    return "0x" + bytes(value).hex() if not isinstance(value, str) else value


# --- member list -------------------------------------------------------------------------------------------------
def member_rows(ca: Any, chain: ChainReader | None) -> list[dict[str, Any]]:
    """One row per issued certificate: what the certificate says, whether the CRL lists it, what the chain says."""
    revoked = {entry["serial"] for entry in ca._index["revoked"]}  # noqa: SLF001 - the CA's own index, read-only
    rows = []
    for entry in ca.issued:
        row: dict[str, Any] = {
            "member_id": entry["member_id"], "role": entry["role"].lower(), "user_id": entry.get("user_id") or "",
            "eth_address": entry["eth_address"], "serial": entry["serial"], "not_after": entry["not_after"],
            "crl_revoked": entry["serial"] in revoked,
        }
        if chain is not None:
            info = chain.member(entry["eth_address"])
            row["chain_role"] = Role(info.role).name.lower() if info.role else "unregistered"
            row["chain_revoked"] = bool(info.revoked)
            row["chain_fingerprint_matches"] = ("0x" + bytes(info.cert_fingerprint).hex()) == entry["fingerprint"]
            row["balance_wei"] = int(chain.w3.eth.get_balance(entry["eth_address"]))
        rows.append(row)
    return rows


# --- config init -------------------------------------------------------------------------------------------------
ROLE_SETTINGS = {"cc": "ClearingCenterSettings", "sp": "ServiceProviderSettings", "bank": "BankSettings",
                 "device": "DeviceSettings"}


def member_values(role: str, member_dir: Path | None, ca_dir: Path | None, **chain: str | None) -> dict[str, Any]:
    """Settings a template can fill from what `ca init` and `member add` wrote (and the chain's URL and file)."""
    values: dict[str, Any] = {}
    if member_dir is not None:
        member_dir = Path(member_dir).resolve()
        values.update(member_id=member_dir.name, cert_path=str(member_dir / "cert.pem"),
                      key_path=str(member_dir / "key.pem"), eth_key_path=str(member_dir / "eth.key"))
        if role == "device":
            values.update(keystore_path=str(member_dir / "keystore.json"), wallet_path=str(member_dir / "wallet.db"))
        else:
            values["database_url"] = f"sqlite:///{member_dir / 'service.db'}"
    if ca_dir is not None:
        ca_dir = Path(ca_dir).resolve()
        values.update(ca_path=str(ca_dir / "root.cert.pem"), crl_path=str(ca_dir / "crl.pem"))
    values.update({key: str(value) for key, value in chain.items() if value})
    if role == "sp":
        values["catalog_key"] = os.urandom(32).hex()  # a fresh at-rest key for this SP's catalog
    return values


def settings_template(role: str, values: dict[str, Any] | None = None) -> str:
    """A TOML settings file for `role` with every field, its description as a comment and its default; `values`
    (see `member_values`) are filled in, the other required fields are left for the operator."""
    from offchain.core import settings as settings_module

    values = values or {}
    cls = getattr(settings_module, ROLE_SETTINGS[role])
    lines = [f"# Clearhouse {cls.ROLE_NAME} settings ({cls.__name__}); every key can also be set as",
             "# CLEARHOUSE_<KEY> in the environment, which wins over this file.", ""]
    for name, field in cls.model_fields.items():
        lines.append(f"# {field.description or name}")
        default = field.get_default(call_default_factory=True)
        if name in values:
            lines.append(f"{name} = {_toml_value(name, values[name], cls)}")
        elif field.is_required():
            lines.append(f'{name} = ""  # required')
        elif default is None:
            lines.append(f"# {name} =")
        else:
            lines.append(f"{name} = {_toml_value(name, default, cls)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(name: str, value: Any, cls: Any) -> str:
    import json

    if name == "port" and value == -1:
        return str(cls.DEFAULT_PORT)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return json.dumps([str(v) for v in value])
    if name == "database_url" and not value:
        return json.dumps(f"sqlite:///var/{cls.ROLE_NAME}.db")
    return json.dumps(str(value))


# --- bank deposit ------------------------------------------------------------------------------------------------
def bank_deposit(settings: Any, user_id: str, amount: int, deposit_id: str | None = None) -> dict[str, Any]:
    """Credit `amount` (minor units) to `user_id` at the bank, as the bank member of `settings` (mutual TLS)."""
    from offchain.transport.client import SyncJsonClient
    from offchain.transport.wiring import require_path

    if amount <= 0:
        raise SettingError("the amount is in minor units and must be positive", field="amount", got=amount)
    tls = [str(require_path(getattr(settings, name), name)) for name in ("cert_path", "key_path", "ca_path")]
    deposit_id = deposit_id or f"dep-{user_id}-{os.urandom(4).hex()}"
    url = f"https://{settings.host}:{settings.port}"
    client = SyncJsonClient(url, *tls)
    try:
        answer = client.post("/v1/deposits", {"deposit_id": deposit_id, "user_id": user_id, "amount": amount})
    finally:
        client.close()
    return {**answer, "idempotency_key": deposit_id}  # the bank answers the on-chain deposit id (its hash)


__all__ = ["init_ca", "add_member", "AddedMember", "member_rows", "settings_template", "member_values", "bank_deposit",
           "is_dev_chain", "ROLE_SETTINGS"]
