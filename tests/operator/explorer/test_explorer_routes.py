"""The explorer's pages and routing through aiohttp's test client against the settled story on anvil: every page
renders from the audit index, search routes each kind of id to its page, unknown ids are 404 pages, and an export's
manifest digests the exact bytes served."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any as ChainWorld  # the `world` fixture of tests/operator/conftest.py

import pytest
from eth_account import Account
from explorer_kit import fetch, rpc_url

from offchain.core.messages import keccak
from offchain.operator.explorer import ExplorerConfig


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


@pytest.fixture(scope="module")
def config(world: ChainWorld, tmp_path_factory) -> ExplorerConfig:
    return ExplorerConfig(rpc_url=rpc_url(world.w3), deployment_path=world.deployment_path,
                          cache_dir=tmp_path_factory.mktemp("explorer-cache"), confirmations=3)


def _event(world: ChainWorld, name: str) -> dict:
    logs = getattr(world.contract.events, name)().get_logs(from_block=0)
    return logs[0]


def test_overview_shows_totals_and_reconciliation(config: ExplorerConfig) -> None:
    (page,) = fetch(config, ["/"])
    assert page.status == 200
    assert 'data-total="deposited"' in page.text and ">1,600<" in page.text  # 1,000 + 600 deposited
    assert 'id="reconciliation-status"' in page.text and 'id="network"' not in page.text


def test_search_routes_every_kind_of_id(world: ChainWorld, config: ExplorerConfig) -> None:
    s1, s3 = world.notes["serials"]["s1"], world.notes["serials"]["s3"]
    content_a = world.notes["contents"]["A"][0]
    request_id = world.notes["unconfirmed_request"]
    settled = _event(world, "UsageSettled")
    block_hash = _hex(world.w3.eth.get_block(settled["blockNumber"])["hash"])
    queries = {
        _hex(s1): f"/serial/{_hex(s1)}",
        _hex(s3): f"/serial/{_hex(s3)}",  # opened by a renewal, not by issue
        _hex(content_a): f"/content/{_hex(content_a)}",
        _hex(world.notes["pids"]["B"]): f"/policy/{_hex(world.notes['pids']['B'])}",
        _hex(keccak(b"dep-1")): f"/deposit/{_hex(keccak(b'dep-1'))}",
        _hex(request_id): f"/request/{_hex(request_id)}",
        _hex(settled["transactionHash"]): f"/tx/{_hex(settled['transactionHash'])}",
        block_hash: f"/block/{block_hash}",
        str(settled["blockNumber"]): f"/block/{settled['blockNumber']}",
        world.actors["dev1"].address.lower(): f"/device/{world.actors['dev1'].address}",
        world.actors["bank"].address: f"/member/{world.actors['bank'].address}",
    }
    answers = fetch(config, [f"/search?q={q}" for q in queries])
    assert [(a.status, a.headers.get("Location")) for a in answers] == [(302, url) for url in queries.values()]


def test_search_for_unknown_ids_is_a_404_page(config: ExplorerConfig) -> None:
    unknown = [f"/search?q={_hex(b'Z' * 32)}", f"/search?q={Account.create().address}", "/search?q=hello",
               f"/serial/{_hex(b'Z' * 32)}", "/tx/0x" + "ab" * 32, "/nowhere", "/block/999999"]
    answers = fetch(config, unknown)
    assert [a.status for a in answers] == [404] * len(unknown)
    assert all('id="error-message"' in a.text for a in answers)
    (bad,) = fetch(config, ["/serial/0x1234"])
    assert bad.status == 422 and "expected 32 bytes" in bad.text  # AuditError, a named refusal


def test_every_page_renders(world: ChainWorld, config: ExplorerConfig) -> None:
    a = world.actors
    settled = _event(world, "UsageSettled")
    paths = ["/", f"/serial/{_hex(world.notes['serials']['s2'])}", f"/device/{a['dev2'].address}",
             f"/payee/{a['sp'].address}", f"/content/{_hex(world.notes['contents']['C'][0])}",
             f"/member/{a['cc'].address}", f"/tx/{_hex(settled['transactionHash'])}",
             f"/block/{settled['blockNumber']}", f"/request/{_hex(world.notes['unconfirmed_request'])}",
             f"/deposit/{_hex(keccak(b'dep-2'))}"]
    answers = fetch(config, paths)
    assert [a.status for a in answers] == [200] * len(paths), [a.text[:300] for a in answers if a.status != 200]


def test_lineage_of_claim14_serial_reaches_bank_confirmations(world: ChainWorld, config: ExplorerConfig) -> None:
    (page,) = fetch(config, [f"/serial/{_hex(world.notes['serials']['s1'])}"])
    assert page.status == 200
    for stage in ("deposits", "issue", "renewals", "batches", "settlement", "requests", "confirmations"):
        assert f'data-stage="{stage}"' in page.text
    assert "new serial" in page.text and 'class="badge bad"' not in page.text
    assert page.text.count('data-kind="confirmation"') >= 1


def test_tx_page_decodes_a_custom_error_revert(world: ChainWorld, config: ExplorerConfig) -> None:
    bank = world.actors["bank"]
    fn = world.contract.functions.recordDeposit(keccak(b"dep-1"), keccak(b"alice"), 5, keccak(b"again"))
    tx = fn.build_transaction({"from": bank.address, "gas": 200_000,
                               "nonce": world.w3.eth.get_transaction_count(bank.address)})
    signed = Account.from_key(bank.key).sign_transaction(tx)
    receipt = world.w3.eth.wait_for_transaction_receipt(world.w3.eth.send_raw_transaction(signed.raw_transaction))
    assert receipt["status"] == 0
    (page,) = fetch(config, [f"/tx/{_hex(receipt['transactionHash'])}"])
    assert page.status == 200
    assert '<code id="revert-error">DuplicateDeposit</code>' in page.text
    assert _hex(keccak(b"dep-1")) in page.text  # the error's argument, decoded
    assert 'id="tx-status">included' in page.text  # 1 confirmation of 3


def test_export_csv_json_and_manifest_digest_the_served_bytes(world: ChainWorld, config: ExplorerConfig) -> None:
    path = f"/serial/{_hex(world.notes['serials']['s1'])}"
    csv_file, json_file, manifest = fetch(config, [f"{path}?export=usage&format=csv",
                                                   f"{path}?export=usage&format=json",
                                                   f"{path}?export=usage&format=json&manifest=1"])
    rows = list(csv.DictReader(io.StringIO(csv_file.text)))
    s1, s3 = (_hex(world.notes["serials"][k]) for k in ("s1", "s3"))  # the line s1 -> s3 (claim-14 renewal)
    assert [(r["serial"], int(r["seq"]), int(r["fee"])) for r in rows] == [(s1, 0, 100), (s1, 1, 250),
                                                                           (s1, 2, 100), (s3, 0, 75)]
    assert csv_file.headers["X-Clearhouse-SHA256"] == hashlib.sha256(csv_file.body).hexdigest()
    data = json.loads(manifest.text)
    assert data["sha256"] == hashlib.sha256(json_file.body).hexdigest()
    assert data["chain_id"] == world.deployment.chain_id and data["rows"] == 4
    assert data["head_hash"] == _hex(world.w3.eth.get_block(data["block_range"][1])["hash"])
    (missing,) = fetch(config, [f"{path}?export=nothing&format=csv"])
    assert missing.status == 404


def test_network_panel_shows_each_node_and_a_down_one(world: ChainWorld, config: ExplorerConfig,
                                                      tmp_path: Path) -> None:
    network = tmp_path / "network.json"
    network.write_text(json.dumps({"nodes": [{"name": "n1", "rpc_url": rpc_url(world.w3)},
                                             {"name": "gone", "rpc_url": "http://127.0.0.1:9"}]}))
    (page,) = fetch(ExplorerConfig(**{**config.__dict__, "network_file": network}), ["/"])
    assert page.status == 200 and 'id="network"' in page.text
    assert '<tr class="up"><td>n1</td>' in page.text and '<tr class="down"><td>gone</td>' in page.text
