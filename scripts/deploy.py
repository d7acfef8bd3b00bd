"""Ape script: `ape run deploy --network ethereum:local:foundry` deploys Clearhouse and writes deployments/<network>.json.

The file goes to env CLEARHOUSE_DEPLOYMENTS_DIR if set. The deployer key comes from env CLEARHOUSE_DEPLOYER_KEY, or on local networks from ape's first test account.
The authority is env CLEARHOUSE_AUTHORITY (an address), defaulting to the deployer. Test probes are not deployed.
Roles are wired from env CLEARHOUSE_MEMBERS (a JSON list of {address, role, member_id, cert_fingerprint,
valid_from, valid_until}, and for a device user_id: the user its certificate names, recorded on chain as keccak256) when the deployer is the authority; otherwise the authority registers members itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from offchain.chain import ClearhouseChain, Deployment, deploy
from offchain.core.messages import Role, keccak

ROOT = Path(__file__).resolve().parents[1]


def _deployer_key(network_name: str) -> bytes:
    env_key = os.environ.get("CLEARHOUSE_DEPLOYER_KEY")
    if env_key:
        return bytes.fromhex(env_key.removeprefix("0x"))
    if network_name not in ("local", "anvil", "foundry"):
        raise SystemExit("set CLEARHOUSE_DEPLOYER_KEY to deploy on a non-local network")
    from ape import accounts

    return bytes.fromhex(str(accounts.test_accounts[0].private_key).removeprefix("0x"))

def wire_members(web3, deployment: Deployment, authority_key: bytes, members_path: Path) -> list[str]:
    """Register every member listed in `members_path` from the authority key; returns the registered addresses."""
    authority = ClearhouseChain(web3, deployment, authority_key)
    registered = []
    for entry in json.loads(members_path.read_text()):
        role = Role[entry["role"].upper()] if isinstance(entry["role"], str) else Role(int(entry["role"]))
        user_id = entry.get("user_id") or ""
        authority.register_member(entry["address"], int(role), keccak(entry["member_id"].encode()),
                                  bytes.fromhex(entry["cert_fingerprint"].removeprefix("0x")),
                                  int(entry["valid_from"]), int(entry["valid_until"]),
                                  user_id_hash=keccak(user_id.encode()) if user_id else bytes(32))
        registered.append(entry["address"])
    return registered


def main() -> None:
    from ape import networks
    from eth_account import Account

    provider = networks.provider
    network_name = provider.network.name
    key = _deployer_key(network_name)
    authority = os.environ.get("CLEARHOUSE_AUTHORITY") or Account.from_key(key).address
    deployment = deploy(provider.web3, key, authority, root=ROOT, network=network_name)
    out_dir = Path(os.environ.get("CLEARHOUSE_DEPLOYMENTS_DIR") or ROOT / "deployments")
    path = deployment.write(out_dir / f"{network_name}.json")
    print(f"Clearhouse deployed at {deployment.address} (chain {deployment.chain_id}, block {deployment.deploy_block}); "
          f"authority {authority}; wrote {path}")
    members = os.environ.get("CLEARHOUSE_MEMBERS")
    if members:
        if authority != Account.from_key(key).address:
            raise SystemExit("CLEARHOUSE_MEMBERS needs the deployer to be the authority (unset CLEARHOUSE_AUTHORITY)")
        wired = wire_members(provider.web3, deployment, key, Path(members))
        print(f"registered {len(wired)} members from {members}")
