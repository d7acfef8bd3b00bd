"""The explorer in a real browser: Debian's Chromium, headless, driven by Playwright (nothing downloads a browser).

Against `clearhouse explorer` running as its own process on the settled story: search a serial and follow its
lineage to the bank's confirmation; a tampered signature in the auditor's index shows a failing badge; a CSV
export loads; a JSON export's manifest digests the downloaded bytes. Screenshots land in var/test-screenshots/.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from typing import Any as ChainWorld  # the `world` fixture of tests/operator/conftest.py

import pytest
from explorer_kit import ROOT, explorer_process, rpc_url, tamper_device_signature

from offchain.operator.audit import ContractRef, default_cache_path
from offchain.operator.explorer import ExplorerConfig

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "var" / "test-screenshots"

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
playwright_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (bin/test installs it)", allow_module_level=True)


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:  # launch() starts Chromium on a fresh, empty profile directory
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture(scope="module")
def config(world: ChainWorld, tmp_path_factory) -> ExplorerConfig:
    return ExplorerConfig(rpc_url=rpc_url(world.w3), deployment_path=world.deployment_path,
                          cache_dir=tmp_path_factory.mktemp("explorer-browser-cache"), confirmations=2)


@pytest.fixture(scope="module")
def explorer(config: ExplorerConfig) -> Iterator[str]:
    with explorer_process(config) as url:
        yield url


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_search_serial_and_follow_lineage_to_bank_confirmation(world: ChainWorld, explorer: str, page: Any) -> None:
    page.goto(explorer + "/")
    assert page.locator('[data-total="deposited"] .value').inner_text() == "1,600"
    _shot(page, "overview")
    s2 = _hex(world.notes["serials"]["s2"])
    page.fill("#search", s2)
    page.press("#search", "Enter")
    page.wait_for_url(f"**/serial/{s2}")
    assert page.locator("#verification").inner_text() == "11/11 checks passed"  # 2 batches x 4 + 1 renewal x 3
    stages = page.locator("li.stage").evaluate_all("els => els.map(e => e.dataset.stage)")
    assert stages == ["deposits", "issue", "renewals", "batches", "settlement", "requests", "confirmations"]
    assert "top-up in place" in page.locator('[data-stage="renewals"]').inner_text()
    _shot(page, "lineage-serial")
    confirmed = page.locator('[data-kind="confirmation"]:not(.pending) .step-title a').first
    confirmed.click()
    page.wait_for_url("**/request/0x*")
    assert page.locator(".lead").inner_text() == "confirmed by the bank"
    assert page.locator("#list-confirmation tbody tr").count() == 1
    _shot(page, "transfer-request")


def test_tampered_signature_in_the_index_shows_a_failing_badge(world: ChainWorld, config: ExplorerConfig,
                                                               page: Any, tmp_path: Path) -> None:
    with explorer_process(config):
        pass  # index the chain once into the shared cache
    ref = ContractRef.from_file(world.deployment_path)
    tampered_dir = tmp_path / "tampered-cache"
    tampered_dir.mkdir()
    shutil.copy(default_cache_path(ref, config.cache_dir), default_cache_path(ref, tampered_dir))
    s1 = world.notes["serials"]["s1"]
    first_settle = world.contract.events.UsageSettled().get_logs(from_block=0, argument_filters={"serial": s1})[0]
    tamper_device_signature(default_cache_path(ref, tampered_dir), world.contract,
                            _hex(first_settle["transactionHash"]))
    with explorer_process(ExplorerConfig(**{**config.__dict__, "cache_dir": tampered_dir})) as url:
        page.goto(f"{url}/serial/{_hex(s1)}")
        bad = page.locator('.step.batch .badge.bad[data-check="device signed the UsageBatch"]')
        assert bad.count() == 1
        assert page.locator('.step.batch .badge.bad').count() == 1  # the SP's countersignature still verifies
        verdict = page.locator("#verification")
        assert verdict.inner_text() == "14/15 checks passed" and "bad" in verdict.get_attribute("class")
        assert page.locator("#failed-checks li").count() == 1
        _shot(page, "lineage-tampered-signature")


def test_csv_export_downloads_and_loads(world: ChainWorld, explorer: str, page: Any, tmp_path: Path) -> None:
    s1 = _hex(world.notes["serials"]["s1"])
    page.goto(f"{explorer}/serial/{s1}")
    with page.expect_download() as download_info:
        page.click("#list-usage a.export-csv")
    path = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(path)
    assert path.name.endswith(".csv") and "-usage-at-" in path.name
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["fee"]) for r in rows] == [100, 250, 100, 75] and {r["batch_signatures"] for r in rows} == {"ok"}
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(path)
    assert int(frame["fee"].sum()) == 525 and list(frame["seq"]) == [0, 1, 2, 0]


def test_json_export_manifest_sha256_matches_the_download(world: ChainWorld, explorer: str, page: Any,
                                                          tmp_path: Path) -> None:
    page.goto(f"{explorer}/payee/{world.actors['sp'].address}")
    _shot(page, "payee")
    files = {}
    for link in ("a.export-json", "a.export-manifest"):
        with page.expect_download() as download_info:
            page.click(f"#list-requests {link}")
        files[link] = tmp_path / download_info.value.suggested_filename
        download_info.value.save_as(files[link])
    manifest = json.loads(files["a.export-manifest"].read_text())
    data = files["a.export-json"].read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() and manifest["bytes"] == len(data)
    assert manifest["chain_id"] == world.deployment.chain_id and manifest["list"] == "requests"
    assert manifest["rows"] == len(json.loads(data)["rows"]) > 0


def test_tx_page_raw_hex_toggle_and_decoded_settle(world: ChainWorld, explorer: str, page: Any) -> None:
    settled = world.contract.events.UsageSettled().get_logs(from_block=0)[0]
    page.goto(f"{explorer}/tx/{_hex(settled['transactionHash'])}")
    assert page.locator("#tx-function").inner_text() == "settle"
    assert page.locator("#tx-status").inner_text() == "final"
    raw = page.locator("#calldata pre.raw")
    assert not raw.is_visible()
    page.click("#calldata button.toggle-raw")
    assert raw.is_visible() and raw.inner_text().startswith("0x")
    assert "UsageSettled" in page.locator("#events").inner_text()
    _shot(page, "transaction")
