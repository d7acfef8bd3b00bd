"""`clearhouse bench explorer`: how long the explorer takes to render its overview and a serial's lineage page
when the audit index holds LOGS settled usage logs (default 100,000).

The chain state is real: on a private anvil (paris) one serial settles LOGS usage logs in batches of BATCH (4,000
by default, 25 `settle` transactions, 4 contents), the CC requests the transfers and the bank confirms them; the
audit index is then built by its ordinary `sync()` from the chain. Page times are wall-clock seconds of complete
HTTP GETs through aiohttp's test client (render + the index reads + the signature re-verification of every batch),
first request and median of the next ones. Keys are throwaway, derived from fixed labels: dev chains only.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from eth_utils import keccak

from offchain.chain import start_anvil
from offchain.operator.bench import gas
from offchain.operator.explorer import ExplorerConfig, Sources, build_app

DEFAULT_LOGS = 100_000
DEFAULT_BATCH = 4_000
CONTENTS = 4
REPEATS = 5


def _settle_story(bench: gas.Bench, logs: int, batch: int) -> tuple[bytes, int]:
    """One serial settling `logs` usage logs in batches of `batch`, then requests and confirmations."""
    serial = keccak(text="bench-explorer-serial")
    user = getattr(gas, "USER", keccak(text="bench-explorer-user"))  # the user the bench device is registered for
    cap = gas.PRICE * logs
    bench.client("bank").record_deposit(keccak(text="bench-explorer-deposit"), user, cap, keccak(text="ref"))
    cc = bench.client("clearing_center")
    cc.issue(serial, bench.address("device"), user, cap, bench.now + 365 * 86400)
    transactions = 0
    for first in range(0, logs, batch):
        cc.settle([gas._item(bench, serial, first, min(batch, logs - first), CONTENTS)])
        transactions += 1
    _, request_ids = cc.request_transfers(list(bench.policies[:CONTENTS]))
    bank = bench.client("bank")
    for request_id in request_ids:
        bank.confirm_transfer(request_id, keccak(request_id))
    return serial, transactions


async def _time_pages(config: ExplorerConfig, sources: Sources, paths: dict[str, str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with TestClient(TestServer(build_app(config, sources=sources))) as client:
        for name, path in paths.items():
            times, size = [], 0
            for _ in range(REPEATS + 1):
                start = time.perf_counter()
                response = await client.get(path)
                body = await response.read()
                times.append(time.perf_counter() - start)
                if response.status != 200:
                    raise RuntimeError(f"{path} answered {response.status}: {body[:300]!r}")
                size = len(body)
            results[name] = {"path": path, "first_s": round(times[0], 3),
                             "median_s": round(statistics.median(times[1:]), 3), "html_bytes": size}
    return results


def run(out_path: str = "bench/results/explorer.json", *, logs: int = DEFAULT_LOGS, batch: int = DEFAULT_BATCH,
        root: Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Build the chain state, index it, time the pages; write `out_path` and return the figures."""
    root = Path(root or Path(__file__).resolve().parents[3])
    with start_anvil(hardfork="paris") as node, TemporaryDirectory() as cache:
        w3 = node.web3()
        bench = gas._setup(w3, root)
        start = time.perf_counter()
        serial, transactions = _settle_story(bench, logs, batch)
        settle_s = time.perf_counter() - start
        deployment_path = bench.deployment.write(Path(cache) / "deployment.json")
        config = ExplorerConfig(rpc_url=node.url, deployment_path=deployment_path, cache_dir=Path(cache))
        start = time.perf_counter()
        sources = Sources.open(config)  # the audit index's ordinary sync from the chain
        index_s = time.perf_counter() - start
        try:
            indexed = sources.index.db.execute("SELECT COUNT(*) FROM usage_logs").fetchone()[0]
            pages = asyncio.run(_time_pages(config, sources, {
                "overview": "/", "lineage": f"/serial/0x{serial.hex()}",
                "lineage_export_csv": f"/serial/0x{serial.hex()}?export=usage&format=csv"}))
        finally:
            sources.close()
    figures = {"usage_logs_indexed": indexed, "batch_size": batch, "settle_transactions": transactions,
               "contents": CONTENTS, "chain_setup_s": round(settle_s, 1), "index_sync_s": round(index_s, 1),
               "pages": pages, "repeats": REPEATS}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    if not quiet:
        _print(figures)
    return figures


def _print(figures: dict[str, Any]) -> None:
    print(f"{figures['usage_logs_indexed']:,} settled usage logs indexed ({figures['settle_transactions']} settle "
          f"transactions of {figures['batch_size']:,}); index sync {figures['index_sync_s']} s")
    print(f"{'page':<20} {'first (s)':>10} {'median (s)':>11} {'bytes':>10}")
    for name, page in figures["pages"].items():
        print(f"{name:<20} {page['first_s']:>10} {page['median_s']:>11} {page['html_bytes']:>10,}")


if __name__ == "__main__":
    run()
