"""Ape script: `ape run deploy --network ethereum:local:foundry` deploys Clearhouse and writes deployments/<network>.json.

The deployer key comes from env CLEARHOUSE_DEPLOYER_KEY, or on local networks from ape's first test account.
The authority is env CLEARHOUSE_AUTHORITY (an address), defaulting to the deployer. Test probes are not deployed.
"""

from __future__ import annotations

import os
from pathlib import Path

from offchain.chain import deploy

ROOT = Path(__file__).resolve().parents[1]


def _deployer_key(network_name: str) -> bytes:
    env_key = os.environ.get("CLEARHOUSE_DEPLOYER_KEY")
    if env_key:
        return bytes.fromhex(env_key.removeprefix("0x"))
    if network_name not in ("local", "anvil", "foundry"):
        raise SystemExit("set CLEARHOUSE_DEPLOYER_KEY to deploy on a non-local network")
    from ape import accounts

    return bytes.fromhex(str(accounts.test_accounts[0].private_key).removeprefix("0x"))

def main() -> None:
    from ape import chain, networks
    from eth_account import Account

    provider = networks.provider
    network_name = provider.network.name
    key = _deployer_key(network_name)
    authority = os.environ.get("CLEARHOUSE_AUTHORITY") or Account.from_key(key).address
    deployment = deploy(provider.web3, key, authority, root=ROOT, network=network_name)
    path = deployment.write(ROOT / "deployments" / f"{network_name}.json")
    print(f"Clearhouse deployed at {deployment.address} (chain {chain.chain_id}, block {deployment.deploy_block}); "
          f"authority {authority}; wrote {path}")
