"""`sp-hold`: a second SP that acknowledges usage and never forwards it (its `cc_url` is a closed port), for the
modules that test how a device gets past a withholding SP. `provision_with_withholding_sp` builds the services'
consortium on a fresh deployment plus `sp-hold`; `start_withholding_sp` runs it as `clearhouse serve sp` beside
the other services of the module's flow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from web3 import Web3

from offchain.chain import ClearhouseChain, Deployment, deploy
from offchain.core.types import Role
from offchain.operator.provision import Consortium, MemberSpec, create_member, free_port, provision

ROOT = Path(__file__).resolve().parents[2]
HOLD = "sp-hold"


def provision_with_withholding_sp(w3: Web3, actors: dict, workdir: Path, members: Sequence[MemberSpec]) -> Consortium:
    deployment = deploy(w3, actors["deployer"].key, actors["authority"].address, root=ROOT)
    made = provision(workdir, w3, deployment, actors["authority"].key, members=members,
                     rpc_url=str(w3.provider.endpoint_uri), fast_kdf=True)
    authority = ClearhouseChain(w3, Deployment.load(made.deployment_path), actors["authority"].key)
    member = create_member(made.ca(), authority, w3, made.workdir, MemberSpec(HOLD, Role.SERVICE_PROVIDER))
    made.members[HOLD] = member
    settings = json.loads(made.settings_paths["sp"].read_text())
    port = free_port()
    settings.update(member_id=HOLD, port=port, cert_path=str(member.cert_path), key_path=str(member.key_path),
                    eth_key_path=str(member.eth_key_path), database_url=f"sqlite:///{member.directory / 'sp.db'}",
                    cc_url=f"https://127.0.0.1:{free_port()}", catalog_key=os.urandom(32).hex())
    settings.pop("metrics_port", None)
    made.settings_paths[HOLD] = made.workdir / f"{HOLD}.json"
    made.settings_paths[HOLD].write_text(json.dumps(settings))
    made.urls[HOLD] = f"https://127.0.0.1:{port}"
    return made


def start_withholding_sp(flow: Any) -> Any:
    """Start `sp-hold` in the flow's services (stopped with them) and wait until it answers."""
    services = flow.services
    log_path = services.consortium.workdir / f"{HOLD}.log"
    command = [sys.executable, "-m", "offchain.cli", "serve", "sp", "--config",
               str(services.consortium.settings_paths[HOLD])]
    with open(log_path, "ab") as log_file:
        services.processes[HOLD] = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
    services.wait_ready(HOLD)
    return flow
