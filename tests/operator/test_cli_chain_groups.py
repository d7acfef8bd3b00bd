"""The `clearhouse` commands that read or write the chain, through the real CLI (CliRunner, in-process) against
the settled `world` of tests/operator/conftest.py: every audit trail as JSON and CSV, a reset chain failing the
audit's anchors, reconcile chain-only as JSON and CSV, member status / revoke on a deployment of this test's own
CA, and the explorer's option checks.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from offchain.chain import deploy
from offchain.cli import main

ChainWorld = Any  # tests/operator/conftest.py ChainWorld
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> Any:
    return CliRunner(mix_stderr=False).invoke(main, list(args))


@pytest.fixture
def chain(world: ChainWorld, tmp_path: Path) -> list[str]:
    return ["--rpc", world.w3.provider.endpoint_uri, "--deployment", str(world.deployment_path),
            "--cache-dir", str(tmp_path / "cache")]


def rows_of(trail: dict[str, Any], title: str) -> list[dict[str, Any]]:
    return next(s["rows"] for s in trail["sections"] if s["title"].startswith(title))


# --- audit -------------------------------------------------------------------------------------------------------
def test_audit_serial_and_device_trails_as_json(world: ChainWorld, chain: list[str]) -> None:
    s1 = "0x" + world.notes["serials"]["s1"].hex()
    serial = run("audit", "serial", s1, "--json", *chain)
    assert serial.exit_code == 0, serial.stderr
    trail = json.loads(serial.stdout)
    assert trail["title"] == f"serial {s1}"
    assert rows_of(trail, "Origin")[0]["device"] == world.actors["dev1"].address
    assert [r["amount"] for r in rows_of(trail, "Deposits")] == [1_000]  # alice's deposit, not bob's
    assert all(c["ok"] for c in trail["checks"]) and trail["checks"]
    dev2 = run("audit", "device", world.actors["dev2"].address, "--json", "--no-verify", *chain)
    assert dev2.exit_code == 0, dev2.stderr
    assert [r["amount"] for r in rows_of(json.loads(dev2.stdout), "Deposits")] == [600]  # bob's


def test_audit_payee_and_content_trails_as_json(world: ChainWorld, chain: list[str]) -> None:
    cp2 = run("audit", "payee", world.actors["cp2"].address, "--json", *chain)
    assert cp2.exit_code == 0, cp2.stderr
    policies = rows_of(json.loads(cp2.stdout), "Policies naming this payee")
    assert [(p["content_id"], p["price"], p["bps"]) for p in policies] == [("0x" + (b"C" * 32).hex(), 75, 6_001)]
    content = run("audit", "content", "0x" + (b"B" * 32).hex(), "--json", *chain)
    assert content.exit_code == 0, content.stderr
    versions = rows_of(json.loads(content.stdout), "Policy versions")
    assert [(v["version"], v["price"], v["provider"]) for v in versions] == [(1, 250, world.actors["cp1"].address)]


def test_audit_csv_writes_the_named_section_or_names_the_sections(world: ChainWorld, chain: list[str]) -> None:
    s2 = "0x" + world.notes["serials"]["s2"].hex()
    origin = run("audit", "serial", s2, "--csv", "--section", "origin", *chain)
    assert origin.exit_code == 0, origin.stderr
    rows = list(csv.DictReader(io.StringIO(origin.stdout)))
    assert [(r["serial"], r["device"]) for r in rows] == [(s2, world.actors["dev2"].address)]
    unnamed = run("audit", "serial", s2, "--csv", *chain)
    assert unnamed.exit_code == 1 and unnamed.stdout == ""
    assert unnamed.stderr.startswith("error [config_error]: --csv writes one table: name one table; --section one "
                                     "of origin, ")


def test_audit_of_a_malformed_serial_is_a_named_error_as_json(chain: list[str]) -> None:
    result = run("audit", "serial", "nothex", "--json", *chain)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == "message_malformed"
    assert result.stderr.startswith("error [message_malformed]: bytes32 is not hex: 'nothex'")


def test_audit_verify_passes_and_refuses_a_reset_chain(world: ChainWorld, chain: list[str], tmp_path: Path) -> None:
    verified = run("audit", "verify", "--json", *chain)
    assert verified.exit_code == 0, verified.stderr
    assert rows_of(json.loads(verified.stdout), "Verified")[0]["failures"] == 0
    data = json.loads(world.deployment_path.read_text())
    reset = tmp_path / "reset.json"
    reset.write_text(json.dumps({**data, "deploy_block": 10**9}))  # the chain's head is before the deploy block
    failed = run("audit", "verify", "--json", "--rpc", world.w3.provider.endpoint_uri, "--deployment", str(reset),
                 "--cache-dir", str(tmp_path / "cache2"))
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["error"] == "audit_error"  # the index refuses before any trail is built
    assert failed.stderr.splitlines()[0].startswith("error [audit_error]: chain head ")
    assert "is below the deploy block 1000000000: wrong chain or deployment file" in failed.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**data, "deploy_block_hash": "0x" + "00" * 32}))
    mismatch = run("audit", "payee", world.actors["cp1"].address, "--json", "--rpc", world.w3.provider.endpoint_uri,
                   "--deployment", str(other), "--cache-dir", str(tmp_path / "cache3"))
    assert mismatch.exit_code == 1
    anchor = next(c for c in json.loads(mismatch.stdout)["checks"] if c["what"] == "deploy block hash")
    assert anchor["ok"] is False and anchor["detail"].endswith("file 0x" + "00" * 32)


# --- reconcile ---------------------------------------------------------------------------------------------------
def test_reconcile_chain_only_as_json_and_csv(world: ChainWorld, chain: list[str]) -> None:
    result = run("reconcile", "--json", *chain)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["clean"] is True and report["unexplained"] == []
    assert (report["totals"]["deposited"], report["totals"]["settled"]) == (1_600, 950)
    assert [d["key"] for d in report["in_flight"]] == ["0x" + world.notes["unconfirmed_request"].hex()]
    totals = run("reconcile", "--csv", "--section", "totals", *chain)
    assert totals.exit_code == 0
    assert list(csv.DictReader(io.StringIO(totals.stdout)))[0]["deposited"] == "1600"


# --- member status / revoke on this test's own CA and deployment ---------------------------------------------------
def test_member_status_and_revoke(world: ChainWorld, tmp_path: Path) -> None:
    created = run("ca", "init", "--dir", str(tmp_path / "ca"))
    assert created.exit_code == 0, created.stderr
    ca = json.loads(created.stdout)
    deployment = deploy(world.w3, world.actors["authority"].key, ca["authority_address"], root=ROOT)
    path = deployment.write(tmp_path / "deployment.json")
    chain = ["--rpc", world.w3.provider.endpoint_uri, "--deployment", str(path)]
    ca_dir = ["--ca-dir", ca["ca_dir"]]
    added = run("member", "add", "sp9", "--role", "service_provider", *ca_dir, "--json", *chain)
    assert added.exit_code == 0, added.stderr
    unknown = run("member", "status", "nobody", *ca_dir, *chain)
    assert unknown.exit_code == 1
    assert unknown.stderr.splitlines() == ["error [not_found]: no certificate was ever issued to member 'nobody'",
                                           "  member_id: nobody"]
    before = run("member", "status", "sp9", *ca_dir, *chain)
    assert before.exit_code == 0, before.stderr
    revoked = run("member", "revoke", "sp9", *ca_dir, "--authority-key-file", ca["authority_key_file"], *chain)
    assert revoked.exit_code == 0, revoked.stderr
    assert json.loads(revoked.stdout)["crl"] == str(Path(ca["ca_dir"]) / "crl.pem")
    after = run("member", "status", "sp9", *ca_dir, *chain)
    assert after.exit_code == 0
    assert json.loads(before.stdout) != json.loads(after.stdout)  # the revocation shows
    listed = run("member", "list", *ca_dir, "--json", *chain)
    row = next(r for r in json.loads(listed.stdout) if r["member_id"] == "sp9")
    assert row["crl_revoked"] is True and row["chain_revoked"] is True


# --- explorer option checks ----------------------------------------------------------------------------------------
def test_explorer_checks_its_tls_options_before_serving(chain: list[str], tmp_path: Path) -> None:
    mtls = run("explorer", "--mtls", *chain)
    assert mtls.exit_code == 1
    assert mtls.stderr.startswith("error [config_error]: --mtls needs --ca, --cert, --key: ")
    assert "  missing: --ca,--cert,--key" in mtls.stderr
    stray = tmp_path / "ca.pem"
    stray.write_text("")
    without = run("explorer", "--ca", str(stray), *chain)
    assert without.exit_code == 1
    assert without.stderr.splitlines() == ["error [config_error]: --ca/--cert/--key/--crl only apply with --mtls",
                                           "  mtls: False"]
