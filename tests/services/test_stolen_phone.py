"""The stolen phone, end to end with every service in its own process (issue 10 item 1): alice deposits 10,000,
phone A is issued all of it and spends 1,000 (settled), the phone is stolen, `clearhouse member revoke
alice-phone --release-logs` revokes it on chain and on the CRL and releases its log, the CC credits the released
9,000 from the IssueLogReleased event, and phone B (alice-tablet) is issued exactly those 9,000 through the real
CC. The thief's later uses never reach money: uploads, renewals and a receive log an SP forwards are refused with
named errors, and the chain refuses a second release.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from offchain.chain import deploy
from offchain.content_provider.publisher import content_id_for
from offchain.core.errors import CertificateRevoked, ContractReverted
from offchain.core.messages import ReceiveLog, Role
from offchain.core.types import to_hex, user_id_hash
from offchain.operator.provision import DEFAULT_MEMBERS, Consortium, MemberSpec, provision
from offchain.trust.certs import Envelope

ROOT = Path(__file__).resolve().parents[2]
DEPOSIT, PRICE = 10_000, 1_000
Flow = Any  # tests/services/conftest.py Flow


@pytest.fixture(scope="module")
def consortium(w3: Web3, compiled: dict, actors: dict, tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """The default consortium plus alice's second device (phone B) and the split's second payee."""
    deployment = deploy(w3, actors["deployer"].key, actors["authority"].address, root=ROOT)
    members = (*DEFAULT_MEMBERS, MemberSpec("alice-tablet", Role.DEVICE, user_id="alice"),
               MemberSpec("studio2", Role.CONTENT_PROVIDER))
    return provision(tmp_path_factory.mktemp("stolen"), w3, deployment, actors["authority"].key, members=members,
                     rpc_url=str(w3.provider.endpoint_uri), fast_kdf=True)


@pytest.fixture(scope="module")
def story(flow: Flow) -> dict[str, Any]:
    return {}


def test_phone_a_spends_1000_of_10000_and_it_settles(flow: Flow, story: dict[str, Any]) -> None:
    flow.deposit("dep-stolen-1", "alice", DEPOSIT)
    story["policy_id"] = flow.publish("stolen-film", price=PRICE)
    phone_a = story["phone_a"] = flow.device("alice-phone")
    balance = phone_a.request_issue_log()  # all of alice's deposits
    assert balance.cap == DEPOSIT
    phone_a.download(content_id_for("stolen-film"), 1)
    phone_a.use(content_id_for("stolen-film"), 1)
    assert phone_a.upload().logs == 1
    chain, serial = flow.chain(), balance.serial
    flow.wait_for(lambda: chain.issue_log(serial).spent == PRICE, what="phone A's use settled")
    story["serial_a"] = serial


def test_revoke_with_release_returns_the_unspent_9000(flow: Flow, story: dict[str, Any], actors: dict,
                                                       tmp_path: Path) -> None:
    key_file = tmp_path / "authority.key"
    key_file.write_text(actors["authority"].key.hex())
    consortium = flow.consortium
    result = subprocess.run(
        [sys.executable, "-m", "offchain.cli", "member", "revoke", "alice-phone", "--release-logs",
         "--ca-dir", str(consortium.ca_dir), "--authority-key-file", str(key_file),
         "--rpc", consortium.rpc_url, "--deployment", str(consortium.deployment_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"complete": true' in result.stdout and '"released": 9000' in result.stdout
    status = subprocess.run(
        [sys.executable, "-m", "offchain.cli", "member", "status", "alice-phone", "--ca-dir", str(consortium.ca_dir),
         "--rpc", consortium.rpc_url, "--deployment", str(consortium.deployment_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["complete"], shown["on_crl"], shown["pending_steps"]) == (True, True, [])
    assert [log["open_amount"] for log in shown["issue_logs"]] == [0]  # nothing left to release
    chain = flow.chain()
    funds = chain.user_funds(user_id_hash("alice"))
    assert (funds.deposited, funds.allocated) == (DEPOSIT, PRICE)  # only the settled 1,000 stays allocated
    log = chain.issue_log(story["serial_a"])
    assert (log.cap, log.spent, log.seq_limit) == (PRICE, PRICE, log.next_seq)


def test_phone_b_is_issued_the_released_9000_by_the_cc(flow: Flow, story: dict[str, Any]) -> None:
    phone_b = story["phone_b"] = flow.device("alice-tablet")
    balance = phone_b.request_issue_log()  # all that is available: the CC learned the release from the event
    assert (balance.cap, balance.spent) == (DEPOSIT - PRICE, 0)
    view = flow.services.client("alice-tablet", "cc").get("/v1/users/alice")
    assert (view["deposited"], view["allocated"], view["released"], view["available"]) == (
        DEPOSIT, DEPOSIT + DEPOSIT - PRICE, DEPOSIT - PRICE, 0)
    assert [e["kind"] for e in view["entries"]].count("release") == 1
    assert flow.chain().user_funds(user_id_hash("alice")).allocated == DEPOSIT


def test_thief_uses_offline_but_every_later_upload_and_renewal_is_refused(flow: Flow, story: dict[str, Any]) -> None:
    phone_a = story["phone_a"]
    phone_a.use(content_id_for("stolen-film"), 1)  # offline: the wallet still shows 9,000 it can no longer get paid
    with pytest.raises(CertificateRevoked):
        phone_a.upload()
    with pytest.raises(CertificateRevoked):
        phone_a.renew()
    pending = phone_a.module.pending_batch(phone_a.domain)
    assert pending is not None
    batch, device_sig, _run = pending
    sp = flow.consortium.member("sp")
    receive_log = ReceiveLog(usage_batch=batch.struct_hash(), payer=phone_a.module.eth_address,
                             received_at=int(time.time()))
    envelope = Envelope.seal(receive_log, flow.consortium.domain, sp.eth_private_key(), sp.cert_path.read_bytes())
    answer = flow.services.client("sp", "cc").post("/v1/receive-logs", {"items": [{
        "receive_log": envelope.to_json(), "usage_batch": batch.to_json(), "device_signature": to_hex(device_sig),
        "device_certificate": flow.consortium.member("alice-phone").cert_path.read_text()}]})
    assert answer["accepted"] == [] and answer["rejected"][0]["error"] == CertificateRevoked.code
    with pytest.raises(ContractReverted) as info:  # the log is closed: a second release changes nothing
        flow.services.chain("cc", flow.w3).send("releaseIssueLog", story["serial_a"])
    assert info.value.error_name == "IssueLogClosed"
    assert flow.chain().user_funds(user_id_hash("alice")).allocated == DEPOSIT
