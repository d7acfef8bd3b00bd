"""`clearhouse demo --hsm` end to end: the CA root, the authority and the CC, SP and bank signing keys live only in
a SoftHSM2 token, yet the CC's transactions and issue logs, the bank's receipts and confirmations and the SP's
receive logs go through, and chain, CC database and bank ledger reconcile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 240
HSM_MEMBERS = ("cc", "sp", "bank")

pytestmark = pytest.mark.skipif(shutil.which("softhsm2-util") is None, reason="softhsm2 missing (bin/test installs it)")

# Run in a fresh process against the demo's token: every key's attributes and address, as the token reports them.
TOKEN_PROBE = """
import json, sys
from pathlib import Path
from pkcs11 import Attribute, ObjectClass
from offchain.trust import keys
config = keys.Pkcs11Config(keys.softhsm_module(), sys.argv[1], sys.argv[2])
token = keys.open_token(config)
out = {}
for label in sys.argv[3:]:
    private = token.find_key(label, ObjectClass.PRIVATE_KEY)
    out[label] = {"address": keys.open_secp256k1(config, label).address,
                  "extractable": private[Attribute.EXTRACTABLE], "sensitive": private[Attribute.SENSITIVE]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def hsm_demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir = tmp_path_factory.mktemp("demo-hsm")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    result = subprocess.run([sys.executable, "-m", "offchain.cli", "demo", "--hsm", "--workdir", str(workdir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S,
                            env={**env, "COLUMNS": "160"})
    return result, workdir


def test_demo_hsm_completes_and_reconciles(hsm_demo) -> None:
    result, _ = hsm_demo
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "keys in PKCS#11 token 'clearhouse-demo'" in result.stdout
    assert "reconciled: no unexplained difference" in result.stdout
    assert "demo complete" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_demo_hsm_leaves_no_signing_key_on_disk(hsm_demo) -> None:
    result, workdir = hsm_demo
    assert result.returncode == 0
    consortium = workdir / "consortium"
    assert not (consortium / "ca" / "root.key.pem").exists() and (consortium / "ca" / "root.key.pkcs11.json").exists()
    assert not (consortium / "ca" / "authority-eth.key").exists()
    for name in HSM_MEMBERS:
        assert not (consortium / "members" / name / "eth.key").exists()
        settings = json.loads((consortium / f"{name}.json").read_text())
        assert settings["key_backend"] == "pkcs11" and "eth_key_path" not in settings
    assert (consortium / "members" / "studio" / "eth.key").exists()  # positive control: file members keep files


def test_demo_hsm_members_certified_addresses_are_the_tokens_non_extractable_keys(hsm_demo) -> None:
    result, workdir = hsm_demo
    assert result.returncode == 0
    conf = workdir / "softhsm" / "softhsm2.conf"
    probe = subprocess.run([sys.executable, "-c", TOKEN_PROBE, "clearhouse-demo", "clearhouse-demo-pin",
                            *HSM_MEMBERS, "authority"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SOFTHSM2_CONF": str(conf)}, check=True)
    token = json.loads(probe.stdout)
    index = json.loads((workdir / "consortium" / "ca" / "index.json").read_text())
    certified = {entry["member_id"]: entry["eth_address"] for entry in index["issued"]}
    for name in HSM_MEMBERS:
        assert token[name]["address"] == certified[name]
    for name in (*HSM_MEMBERS, "authority"):
        assert token[name]["extractable"] is False and token[name]["sensitive"] is True
    deployment = json.loads((workdir / "consortium" / "deployment.json").read_text())
    assert token["authority"]["address"].lower() in json.dumps(deployment).lower()
