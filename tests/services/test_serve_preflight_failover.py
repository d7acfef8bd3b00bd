"""`clearhouse serve`'s start checks read the chain through the service's failover endpoints (`rpc_urls`): a
first node that is down or silent is skipped, as the running service would skip it; only when no endpoint
answers does the `rpc` check fail, naming every endpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from offchain.core.settings import ClearingCenterSettings, load_settings
from offchain.operator.preflight import PreflightFailed, preflight
from offchain.operator.provision import Consortium

CLOSED = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused at once


def settings_with(consortium: Consortium, tmp_path: Path, **changes: Any) -> ClearingCenterSettings:
    data = {**json.loads(consortium.settings_paths["cc"].read_text()), **changes}
    path = tmp_path / "cc-changed.json"
    path.write_text(json.dumps(data))
    return load_settings(ClearingCenterSettings, path)


def live_url(consortium: Consortium) -> str:
    return str(json.loads(consortium.settings_paths["cc"].read_text())["rpc_url"])


def test_first_endpoint_refusing_is_skipped_and_every_check_passes(consortium: Consortium, tmp_path: Path) -> None:
    live = live_url(consortium)
    lines: list[str] = []
    settings = settings_with(consortium, tmp_path, rpc_url=CLOSED, rpc_urls=[CLOSED, live])
    checks = preflight(settings, timeout_s=5, echo=lines.append)
    assert [c.name for c in checks] == ["rpc", "chain_id", "contract", "member", "gas"]
    assert checks[0].detail.startswith(f"{live} answers") and f"({CLOSED} did not answer)" in checks[0].detail


def test_first_endpoint_silent_is_skipped_after_the_timeout(consortium: Consortium, tmp_path: Path,
                                                            silent_node: str) -> None:
    live = live_url(consortium)
    settings = settings_with(consortium, tmp_path, rpc_urls=[silent_node, live])
    checks = preflight(settings, timeout_s=0.5)
    assert checks[0].detail.startswith(f"{live} answers") and [c.name for c in checks][-1] == "gas"


def test_no_endpoint_answering_fails_the_rpc_check_naming_each(consortium: Consortium, tmp_path: Path,
                                                               silent_node: str) -> None:
    # positive control: the same settings with the live node last pass
    assert preflight(settings_with(consortium, tmp_path, rpc_urls=[CLOSED, live_url(consortium)]), timeout_s=5)
    settings = settings_with(consortium, tmp_path, rpc_urls=[CLOSED, silent_node])
    with pytest.raises(PreflightFailed) as refused:
        preflight(settings, timeout_s=0.5)
    assert (refused.value.check, refused.value.rpc_url) == ("rpc", f"{CLOSED}, {silent_node}")
    assert "none of the 2 chain nodes" in refused.value.message
    assert CLOSED in refused.value.message and silent_node in refused.value.message
