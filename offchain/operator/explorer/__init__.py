"""`clearhouse explorer`: an auditor's read-only web view of one Clearhouse deployment, built on the audit index.

Transactions, blocks and search like a block explorer; deposits, issue logs, renewals, usage batches, payee splits
and bank confirmations as lineage flows with re-verified signature badges, which no generic explorer knows.
It never sends a transaction; with `--mtls` only consortium members can read it.
"""

from offchain.operator.explorer.app import build_app, serve
from offchain.operator.explorer.sources import ExplorerConfig, Sources

__all__ = ["build_app", "serve", "ExplorerConfig", "Sources"]
