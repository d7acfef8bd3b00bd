"""The lifecycle of a kept demo (`clearhouse demo --keep`): the state file it writes (pids, ports, URLs, environment),
the try-it script with complete commands and real ids, and `clearhouse demo status | stop | logs` from another
terminal.

The state file is `<workdir>/demo-state.json`, and `var/demo-latest.json` points at the latest one. `stop` sends
SIGTERM to the demo process only (it stops what it started); nothing here kills by name.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from offchain.core.errors import NotFound, SettingError
from offchain.core.files import write_atomically
from offchain.core.types import project_root

STATE_FILE = "demo-state.json"
TRY_IT_FILE = "try-it.sh"


def latest_pointer() -> Path:
    return project_root() / "var" / "demo-latest.json"


# --- written by the demo -------------------------------------------------------------------------------------------
def try_it_lines(consortium: Any, state: Any, passphrase: str) -> list[str]:
    """Complete commands (real paths and ids) for the kept demo: deposit, renew, download, use, upload, audit."""
    device = next(m for m in consortium.members.values() if m.user_id)
    published = next(iter(state.published.values()), None)
    q = shlex.quote
    dev = f"clearhouse device --config {q(str(consortium.settings_paths[device.member_id]))}"
    lines = [
        f"export CLEARHOUSE_DEVICE_PASSPHRASE={q(passphrase)}",
        f"export CLEARHOUSE_RPC_URL={q(state.rpc_url)}",
        f"export CLEARHOUSE_DEPLOYMENT={q(str(consortium.deployment_path))}",
        f"clearhouse bank deposit --config {q(str(consortium.settings_paths['bank']))} --user {device.user_id} "
        f"--amount 1000",
        f"{dev} balance",
        f"{dev} renew",
        f"{dev} catalog",
    ]
    if published is not None:
        content = "0x" + bytes(published.content_id).hex()
        lines += [f"{dev} download {content} --version {published.version}",
                  f"{dev} use {content} --version {published.version} --out {q(str(state.workdir / 'used.bin'))}"]
    lines += [
        f"{dev} upload",
        f"clearhouse audit device {device.eth_address}",
        "clearhouse audit verify",
        f"clearhouse reconcile --cc-config {q(str(consortium.settings_paths['cc']))} "
        f"--bank-config {q(str(consortium.settings_paths['bank']))}",
        f"clearhouse member list --ca-dir {q(str(consortium.ca_dir))}",
        f"clearhouse ca refresh-crl --ca-dir {q(str(consortium.ca_dir))}",
        "clearhouse demo status",
        "clearhouse demo logs cc",
        "clearhouse demo stop",
    ]
    return lines


def explorer_command(consortium: Any, state: Any) -> str:
    """The `clearhouse explorer` command for this demo's chain and deployment (with its CC and bank settings for the
    reconciliation status); it serves http://127.0.0.1:8780 until Ctrl-C."""
    q = shlex.quote
    command = f"clearhouse explorer --rpc {q(state.rpc_url)} --deployment {q(str(consortium.deployment_path))}"
    for role, option in (("cc", "--cc-config"), ("bank", "--bank-config")):
        if role in consortium.settings_paths:
            command += f" {option} {q(str(consortium.settings_paths[role]))}"
    return command


def ops_urls(consortium: Any) -> dict[str, dict[str, str]]:
    """service -> its unauthenticated /healthz and /metrics URLs (the plain-HTTP ops listener, `metrics_port`)."""
    return {name: {"healthz": f"{url}/healthz", "metrics": f"{url}/metrics"}
            for name, url in sorted(getattr(consortium, "metrics_urls", {}).items())}


def write_state(consortium: Any, state: Any, processes: Any, passphrase: str) -> dict[str, Any]:
    """Write the state file, the latest pointer and the try-it script; returns the state."""
    workdir = Path(state.workdir)
    lines = try_it_lines(consortium, state, passphrase)
    script = workdir / TRY_IT_FILE
    script.write_text("#!/usr/bin/env bash\n# The kept demo's try-it commands (written by `clearhouse demo --keep`).\n"
                      "set -euo pipefail\n" + "\n".join(lines) + "\n")
    script.chmod(0o755)
    services = {}
    for name, process in getattr(processes, "running", {}).items():
        services[name] = {"pid": process.pid, "url": consortium.urls.get(name, ""),
                          "log": str(workdir / f"{name}.log"), "config": str(consortium.settings_paths.get(name, "")),
                          **ops_urls(consortium).get(name, {})}
    data = {
        "demo_pid": os.getpid(), "started_at": int(time.time()), "workdir": str(workdir), "rpc_url": state.rpc_url,
        "deployment": str(consortium.deployment_path), "ca_dir": str(consortium.ca_dir), "services": services,
        "env": {"CLEARHOUSE_DEVICE_PASSPHRASE": passphrase, "CLEARHOUSE_RPC_URL": state.rpc_url,
                "CLEARHOUSE_DEPLOYMENT": str(consortium.deployment_path)},
        "try_it": str(script),
        "explorer": explorer_command(consortium, state),
        "devices": {m.member_id: {"user": m.user_id, "config": str(consortium.settings_paths[m.member_id])}
                    for m in consortium.members.values() if m.user_id and m.member_id in consortium.settings_paths},
    }
    write_atomically(workdir / STATE_FILE, json.dumps(data, indent=2))  # another terminal polls for it
    pointer = latest_pointer()
    write_atomically(pointer, json.dumps({"state": str(workdir / STATE_FILE)}))
    return data


def clear_state(workdir: Path) -> None:
    """The demo stopped: its state file goes (the latest pointer too when it names this demo)."""
    path = Path(workdir) / STATE_FILE
    path.unlink(missing_ok=True)
    pointer = latest_pointer()
    try:
        if json.loads(pointer.read_text()).get("state") == str(path):
            pointer.unlink()
    except (OSError, ValueError):
        pass


# --- read from another terminal --------------------------------------------------------------------------------------
def read_state(workdir: Path | None = None) -> dict[str, Any]:
    """The state of the demo in `workdir`, or of the latest kept demo; NotFound when none is running."""
    if workdir is not None:
        path = Path(workdir) / STATE_FILE
    else:
        try:
            path = Path(json.loads(latest_pointer().read_text())["state"])
        except (OSError, ValueError, KeyError):
            raise NotFound("no kept demo: start one with `clearhouse demo --keep` (or pass --workdir)",
                           kind="demo") from None
    try:
        return dict(json.loads(path.read_text()))
    except OSError:
        raise NotFound(f"no kept demo state at {path}: the demo stopped, or it was not started with --keep",
                       kind="demo", path=str(path)) from None


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 443), timeout=2):
            return True
    except OSError:
        return False


def status(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row for the demo process and one per service: pid alive, port accepting, URL, log file."""
    rows = [{"name": "demo", "pid": data["demo_pid"], "alive": _alive(int(data["demo_pid"])),
             "listening": _port_open(data["rpc_url"]) if data.get("rpc_url") else False, "url": data["rpc_url"],
             "log": ""}]
    for name, service in sorted(data["services"].items()):
        rows.append({"name": name, "pid": service["pid"], "alive": _alive(int(service["pid"])),
                     "listening": _port_open(service["url"]), "url": service["url"], "log": service["log"]})
    return rows


def stop(data: dict[str, Any], *, timeout_s: float = 30.0) -> bool:
    """SIGTERM to the demo process (it stops its services and chain); True once it exited within `timeout_s`."""
    pid = int(data["demo_pid"])
    if not _alive(pid):
        clear_state(Path(data["workdir"]))
        return True
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def log_tail(data: dict[str, Any], service: str, lines: int) -> Iterable[str]:
    if service not in data["services"]:
        raise SettingError(f"no service {service!r} in this demo; one of {sorted(data['services'])}", field="service")
    path = Path(data["services"][service]["log"])
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        raise NotFound(f"no log at {path}", kind="log", path=str(path)) from None


__all__ = ["try_it_lines", "explorer_command", "ops_urls", "write_state", "clear_state", "read_state", "status", "stop", "log_tail", "STATE_FILE",
           "TRY_IT_FILE"]
