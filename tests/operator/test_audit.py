"""Audit trails against a real anvil: trails per serial/device/payee/content, re-verification, the index cache."""

from __future__ import annotations

import io
import json

import pytest
from eth_account import Account

from offchain.operator import audit
from offchain.core.errors import NotFound
from offchain.core.messages import keccak, sign
from offchain.core.types import to_hex

from typing import Any as ChainWorld  # the `world` fixture of tests/operator/conftest.py


@pytest.fixture()
def index(world: ChainWorld, tmp_path):
    with audit.open_index(rpc_url=world.w3.provider.endpoint_uri, deployment_path=world.deployment_path,
                          cache_dir=tmp_path, chunk_blocks=7) as idx:
        yield idx


def test_serial_trail_shows_new_serial_renewal_and_decoded_usage(world: ChainWorld, index) -> None:
    s1 = world.notes["serials"]["s1"]
    trail = audit.serial_trail(index, s1)
    usage = trail.section("Usage logs (decoded from settle calldata)")
    assert [(row[3], row[5]) for row in usage.rows] == [(0, 100), (1, 250), (2, 100)]
    closing = trail.section("Renewals closing this serial").rows
    assert len(closing) == 1 and closing[0][3] == to_hex(world.notes["serials"]["s3"])
    deposits = trail.section("Deposits of the user").rows
    assert [row[4] for row in deposits] == [1_000]
    assert trail.checks and trail.failures == 0


def test_serial_trail_of_renewed_serial_follows_lineage_to_user(world: ChainWorld, index) -> None:
    s3 = to_hex(world.notes["serials"]["s3"])
    trail = audit.serial_trail(index, s3)
    origin = trail.section("Origin").rows[0]
    assert origin[1] == world.actors["dev1"].address
    assert origin[3].endswith(to_hex(world.notes["serials"]["s1"]))
    assert trail.failures == 0


def test_device_trail_marks_top_up_in_place_mode(world: ChainWorld, index) -> None:
    trail = audit.device_trail(index, world.actors["dev2"].address)
    renewals = trail.section("Renewals").rows
    assert [row[2] for row in renewals] == ["top_up"]
    assert len(trail.section("Usage logs (decoded from settle calldata)").rows) == 3
    assert trail.failures == 0 and len(trail.checks) == 2 * 4 + 3


def test_payee_trail_split_shares_match_requests_and_confirmations(world: ChainWorld, index) -> None:
    sp = world.actors["sp"].address
    trail = audit.payee_trail(index, sp)
    shares = sum(row[4] for row in trail.section("Accruals requested (payee's split share)").rows)
    requested = sum(row[3] for row in trail.section("Transfer requests").rows)
    assert shares == requested > 0
    assert trail.failures == 0
    totals = trail.section("Totals").rows[0]
    assert totals[0] == totals[1]


def test_content_trail_counts_uses_per_version(world: ChainWorld, index) -> None:
    content_a = world.notes["contents"]["A"][0]
    trail = audit.content_trail(index, content_a)
    per_version = trail.section("Per version").rows
    assert per_version[0][2:5] == (3, 300, 300)  # uses, fees, requested
    with pytest.raises(NotFound):
        audit.content_trail(index, b"Z" * 32)


def test_verify_all_signatures_clean_chain(index) -> None:
    trail = audit.verify_trail(index)
    assert trail.failures == 0
    assert trail.section("Verified").rows[0][:3] == (5, 7, 2)


def test_verify_item_detects_forged_device_signature(world: ChainWorld, index) -> None:
    event = index.events("UsageSettled")[0]
    item = index.settled_items(event.tx_hash)[0]
    forged = audit.SettledItem(**{**item.__dict__, "device_signature": sign(item.batch, world.domain,
                                                                              Account.create().key)})
    checks = audit.verify_item(world.domain, event, forged, event.args["device"])
    failed = [c.what for c in checks if not c.ok]
    assert failed == ["device signed the UsageBatch"]


def test_verify_item_detects_tampered_entries(world: ChainWorld, index) -> None:
    event = index.events("UsageSettled")[0]
    item = index.settled_items(event.tx_hash)[0]
    batch = item.batch
    cheaper = batch.entries[:1] + (1).to_bytes(11, "big") + batch.entries[12:]
    tampered = audit.SettledItem(**{**item.__dict__, "batch": type(batch)(
        serial=batch.serial, first_seq=batch.first_seq, receiver=batch.receiver, policy_ids=batch.policy_ids,
        entries=cheaper)})
    failed = {c.what for c in audit.verify_item(world.domain, event, tampered, event.args["device"]) if not c.ok}
    assert {"event matches calldata", "device signed the UsageBatch", "ReceiveLog digest == event",
            "receiver signed the ReceiveLog"} == failed


def test_sync_is_incremental_and_resets_on_foreign_chain_state(world: ChainWorld, index, revert_chain) -> None:
    again = index.sync()
    assert again.new_events == 0 and not again.reset
    # the extra deposit is this test's own: the shared world goes back to its story afterwards, so the other
    # modules' exact totals (tests/operator/test_cli_chain_groups.py) do not depend on the order of the tests
    snapshot = [world.w3.provider.make_request("evm_snapshot", [])["result"]]
    try:
        world.send("bank", "recordDeposit", b"\x09" * 32, keccak(b"alice"), 5, b"\x07" * 32)
        after = index.sync()
        assert after.new_events == 1 and after.from_block == again.to_block + 1
        index._set_meta(last_block_hash="0x" + "00" * 32)  # as if the chain were restarted or reorganized
        rebuilt = index.sync()
        assert rebuilt.reset and rebuilt.from_block == world.deployment.deploy_block
        assert len(index.events("DepositRecorded")) == 3
    finally:
        revert_chain(world.w3, snapshot)
        index.sync()  # the index follows the chain back (its stored head hash is gone: it rebuilds)


def test_render_json_and_csv_round_trip_rows(world: ChainWorld, index) -> None:
    trail = audit.serial_trail(index, world.notes["serials"]["s2"])
    out = io.StringIO()
    audit.render(trail, "json", out)
    data = json.loads(out.getvalue())
    assert data["failures"] == 0 and data["sections"][0]["rows"][0]["device"] == world.actors["dev2"].address
    out = io.StringIO()
    audit.render(trail, "csv", out, section="settled-batches")  # one table per --section (test_audit_csv.py)
    assert out.getvalue().splitlines()[0] == ",".join(trail.section("Settled batches").columns)


def test_main_serial_prints_table_and_returns_zero(world: ChainWorld, tmp_path) -> None:
    out = io.StringIO()
    code = audit.main_serial(rpc_url=world.w3.provider.endpoint_uri, deployment_path=world.deployment_path,
                             serial=to_hex(world.notes["serials"]["s3"]), cache_dir=tmp_path, stream=out)
    assert code == 0
    assert "Settled batches" in out.getvalue() and "checks passed" in out.getvalue()
