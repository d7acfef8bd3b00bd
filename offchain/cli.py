"""The `clearhouse` command line: the one edge where broad exceptions are caught and turned into readable errors.

Each command is a thin wrapper over a role or operator module; nothing here holds business logic. Imports are
lazy so that `clearhouse --help` stays fast and a broken optional part does not take the whole CLI down.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from offchain.core.errors import ClearhouseError

if TYPE_CHECKING:
    from offchain.transport.server import ServiceModule


def _edge(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; print named errors and unexpected failures as one readable message, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except ClearhouseError as exc:
            if debug:
                raise
            _json_error(exc.to_dict())
            click.secho(f"error [{exc.code}]: {exc.message}", fg="red", err=True)
            for key, value in exc.to_dict()["fields"].items():
                click.echo(f"  {key}: {value}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="yellow", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `clearhouse ... | head`: the reader left; no traceback, the shell's SIGPIPE code
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except Exception as exc:  # the CLI edge: anything unexpected becomes one line plus a hint
            if debug:
                raise
            _json_error({"error": "unexpected_failure", "message": f"{type(exc).__name__}: {exc}", "fields": {}})
            click.secho(f"unexpected failure: {type(exc).__name__}: {exc}", fg="red", err=True)
            click.echo("  run again with `clearhouse --debug ...` for the traceback", err=True)
            sys.exit(2)

    return wrapper


def _json_error(body: dict[str, Any]) -> None:
    """With `--json`, a failure is a JSON document on stdout too ({"error", "message", "fields"}, the HTTP error
    body), so a tool reading stdout always gets JSON; the readable line still goes to stderr."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.params.get("as_json"):
        click.echo(json.dumps(body, indent=2, default=str))


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Clearhouse: a permissioned clearing house for content usage fees."""


# --- services --------------------------------------------------------------------------------------------------
_SERVICE_ROLES = ("bank", "cc", "sp")


def _service_modules() -> dict[str, ServiceModule]:
    """role -> its api module, which implements `ServiceModule` (imported only when serving)."""
    from offchain.bank import api as bank_api
    from offchain.clearing_center import api as cc_api
    from offchain.service_provider import api as sp_api

    return {"cc": cc_api, "sp": sp_api, "bank": bank_api}


@main.command()
@click.argument("role", type=click.Choice(_SERVICE_ROLES))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--chain-timeout-s", type=float, default=5.0, show_default=True, envvar="CLEARHOUSE_CHAIN_TIMEOUT_S",
              help="How long the start checks wait for the chain node to answer.")
@_edge
def serve(role: str, config_path: Path, chain_timeout_s: float) -> None:
    """Run one service (cc, sp or bank) until SIGTERM, with mutual TLS, after checking the chain node, the
    contract's code, this member's on-chain status and its gas (offchain/operator/preflight.py)."""
    from offchain.operator.preflight import preflight

    module = _service_modules()[role]
    settings = module.load_settings(config_path)
    preflight(settings, timeout_s=chain_timeout_s, echo=lambda line: click.echo(f"[serve {role}] {line}", err=True))
    module.serve(settings)


# --- benchmarks ------------------------------------------------------------------------------------------------
@main.group()
def bench() -> None:
    """Benchmarks: print figures and write bench/results/*.json."""


@bench.command("gas")
@click.option("--out", default="bench/results/gas.json", show_default=True)
@_edge
def bench_gas(out: str) -> None:
    """Gas per settled usage log on anvil, N = 1/16/256 logs per transaction, D = 1/4/16 contents."""
    from offchain.operator.bench import gas

    gas.run(out_path=out)


@bench.command("hsm")
@click.option("--out", default="bench/results/hsm.json", show_default=True)
@click.option("-n", "count", default=500, show_default=True, help="Signatures per measurement.")
@_edge
def bench_hsm(out: str, count: int) -> None:
    """Signature latency through a PKCS#11 token (SoftHSM2) vs a key in memory."""
    from offchain.operator.bench import hsm

    hsm.run(out_path=out, n=count)


@bench.command("verify")
@click.option("--out", default="bench/results/verify.json", show_default=True)
@click.option("-n", "count", default=20000, show_default=True, help="Usage logs to verify on the fast path.")
@_edge
def bench_verify(out: str, count: int) -> None:
    """Usage-log signature verifications per second: fast path vs eth-account's generic EIP-712 path."""
    from offchain.operator.bench import verify

    verify.run(out_path=out, n=count)


@bench.command("pipeline")
@click.option("--out", default="bench/results/pipeline.json", show_default=True)
@click.option("--logs", default=65_536, show_default=True, help="Usage logs uploaded in total.")
@click.option("--devices", default=8, show_default=True, help="Devices uploading concurrently.")
@click.option("--network", type=click.Choice(["anvil", "clique"]), default="anvil", show_default=True,
              help="clique: the same load on anvil and on a four-signer Clique network (period 1 s and 2 s).")
@click.option("--period", "periods", type=int, multiple=True, help="clique: block periods to run (default 1 and 2).")
@click.option("--history-logs", default=1_000_000, show_default=True,
              help="anvil: run the load again against a CC database holding this many settled usage logs (0: skip).")
@click.option("--catalog-items", default=200, show_default=True,
              help="anvil: ... and an SP catalog with this many more titles, three of them 16 MiB containers.")
@_edge
def bench_pipeline(out: str, logs: int, devices: int, network: str, periods: tuple[int, ...], history_logs: int,
                   catalog_items: int) -> None:
    """End-to-end usage-log throughput: devices -> SP (mTLS) -> CC -> settled on anvil (or on Clique)."""
    from offchain.operator.bench import pipeline

    if network == "clique":
        out = out if out != "bench/results/pipeline.json" else "bench/results/pipeline-clique.json"
        pipeline.run_clique(out_path=out, logs=logs, devices=devices, periods=periods or (1, 2))
        return
    pipeline.run(out_path=out, logs=logs, devices=devices, history_logs=history_logs, catalog_items=catalog_items)


@bench.command("explorer")
@click.option("--out", default="bench/results/explorer.json", show_default=True)
@click.option("--logs", default=100_000, show_default=True, help="Settled usage logs to index.")
@click.option("--batch", default=4_000, show_default=True, help="Usage logs per settled batch.")
@_edge
def bench_explorer(out: str, logs: int, batch: int) -> None:
    """Explorer page render time (overview, a serial's lineage) with LOGS settled usage logs indexed."""
    from offchain.operator.bench import explorer as bench_explorer_module

    bench_explorer_module.run(out_path=out, logs=logs, batch=batch)


# --- device -----------------------------------------------------------------------------------------------------
@main.group()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              envvar="CLEARHOUSE_DEVICE_CONFIG",
              help="Device settings file (JSON or TOML; env CLEARHOUSE_DEVICE_CONFIG). Needed by every command.")
@click.option("--user", "user_id", default=None,
              help="The user this device belongs to (default: the user named in the device's certificate).")
@click.option("--passphrase-env", default="CLEARHOUSE_DEVICE_PASSPHRASE", show_default=True,
              help="Environment variable holding the keystore passphrase (prompted for when unset).")
@click.pass_context
def device(ctx: click.Context, config_path: Path, user_id: str | None, passphrase_env: str) -> None:
    """A user device: issue logs, downloads, offline use, uploads, withheld-batch skips, balance."""
    ctx.obj = {"config_path": config_path, "user_id": user_id, "passphrase_env": passphrase_env}


def _device_client(ctx: click.Context) -> Any:
    from offchain.core.errors import SettingError
    from offchain.core.settings import DeviceSettings, load_settings
    from offchain.device.client import DeviceClient
    from offchain.operator.cli_ops import passphrase_from_env

    if ctx.obj["config_path"] is None:
        raise SettingError("device commands need the device's settings: clearhouse device --config FILE ...",
                           field="config")
    settings = load_settings(DeviceSettings, ctx.obj["config_path"])
    user_id = ctx.obj["user_id"] or _certificate_user(settings.cert_path)
    passphrase = passphrase_from_env(ctx.obj["passphrase_env"], confirm=False)  # no TTY: names the variable
    return DeviceClient.from_settings(settings, passphrase, user_id)


def _certificate_user(cert_path: Path | None) -> str:
    """The user the CA named in a device certificate (SAN urn:clearhouse:user:<id>); the CC checks it again."""
    from offchain.trust.certs import USER_URN, load_certificate
    from offchain.core.errors import MemberSetupError
    from offchain.transport.wiring import require_path
    from cryptography import x509

    cert = load_certificate(require_path(cert_path, "cert_path").read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    users = [u.removeprefix(USER_URN) for u in uris if u.startswith(USER_URN)]
    if len(users) != 1:
        raise MemberSetupError("the device certificate names no user: pass --user", cert_path=str(cert_path))
    return users[0]


def _show_balance(balance: Any, as_json: bool, *, title: str = "Wallet") -> None:
    from offchain.device import output

    if as_json:
        output.write_json(output.balance_doc(balance), sys.stdout)
    else:
        output.render_balance(balance, title)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="One JSON document on stdout for tools (raw Unix seconds); a failure is JSON too.")(fn)


@device.command("request")
@click.option("--amount", type=int, default=None, help="Allowable amount in minor units (default: all available).")
@_json_option
@click.pass_context
@_edge
def device_request(ctx: click.Context, amount: int | None, as_json: bool) -> None:
    """Ask the clearing center for a first issue log."""
    client = _device_client(ctx)
    try:
        _show_balance(client.request_issue_log(amount), as_json, title="Issue log installed")
    finally:
        client.close()


@device.command("renew")
@click.option("--amount", type=int, default=None, help="New money in minor units (default: all available).")
@_json_option
@click.pass_context
@_edge
def device_renew(ctx: click.Context, amount: int | None, as_json: bool) -> None:
    """Attest the balance and get a renewed issue log (new serial while spending is unsettled)."""
    client = _device_client(ctx)
    try:
        _show_balance(client.renew(amount), as_json, title="Renewed issue log")
    finally:
        client.close()


@device.command("catalog")
@_json_option
@click.pass_context
@_edge
def device_catalog(ctx: click.Context, as_json: bool) -> None:
    """List the service provider's content."""
    from offchain.device import output

    client = _device_client(ctx)
    try:
        items = client.catalog()
    finally:
        client.close()
    if as_json:
        output.write_json(items, sys.stdout)
    else:
        output.render_catalog(items)


@device.command("download")
@click.argument("content_id")
@click.option("--version", type=int, default=1, show_default=True)
@_json_option
@click.pass_context
@_edge
def device_download(ctx: click.Context, content_id: str, version: int, as_json: bool) -> None:
    """Download a secure container with its key wrapped to this device."""
    from offchain.device import output

    client = _device_client(ctx)
    cid = _content_id(content_id)
    try:
        path = client.download(cid, version)
    finally:
        client.close()
    if as_json:
        output.write_json(output.download_doc(path, cid, version), sys.stdout)
    else:
        output.render_download(path, cid, version)


@device.command("use")
@click.argument("content_id")
@click.option("--version", type=int, default=1, show_default=True)
@click.option("--out", default=None, metavar="PATH|-",
              help="Write the plaintext to PATH (a temporary file beside it, renamed when complete), or to stdout "
                   "with `-` (the report then goes to stderr). Required: without it the use would be charged and "
                   "the content thrown away.")
@_json_option
@click.pass_context
@_edge
def device_use(ctx: click.Context, content_id: str, version: int, out: str | None, as_json: bool) -> None:
    """Use downloaded content offline: deduct the fee and write a signed usage log (no network).

    The destination is checked and opened before anything is charged; a use that fails charges nothing."""
    from offchain.device import output
    from offchain.device.delivery import STDOUT, Destination, deliver_use

    destination = Destination.open(out)  # ConfigError(field=out) before the keystore is even unlocked
    try:
        client = _device_client(ctx)
    except BaseException:
        destination.abort()
        raise
    try:
        size = deliver_use(destination, client, _content_id(content_id), version)
        balance = client.balance()
    finally:
        client.close()
    report = sys.stderr if out == STDOUT else sys.stdout  # stdout carries the plaintext with `--out -`
    if as_json:
        output.write_json(output.use_doc(size, balance), report)
    else:
        output.render_use(size, balance, report)


@device.command("upload")
@click.option("--max-logs", type=int, default=1024, show_default=True)
@_json_option
@click.pass_context
@_edge
def device_upload(ctx: click.Context, max_logs: int, as_json: bool) -> None:
    """Upload pending usage logs to the service provider in batches."""
    from offchain.device import output

    client = _device_client(ctx)
    try:
        result = client.upload(max_logs)
    finally:
        client.close()
    if as_json:
        output.write_json(output.upload_doc(result), sys.stdout)
    else:
        output.render_upload(result)


@device.command("skip")
@_json_option
@click.pass_context
@_edge
def device_skip(ctx: click.Context, as_json: bool) -> None:
    """Skip batches an SP acknowledged and never forwarded: after the 7-day withhold window, send the clearing
    center a SkipRange with the SP's signed ack, so this serial's later usage settles, then the batch itself from
    this device's copy, so its fees reach the payees."""
    from offchain.device import output

    client = _device_client(ctx)
    try:
        result = client.skip_withheld()
    finally:
        client.close()
    if as_json:
        output.write_json(output.skip_doc(result), sys.stdout)
    else:
        output.render_skip(result)


@device.command("balance")
@_json_option
@click.pass_context
@_edge
def device_balance(ctx: click.Context, as_json: bool) -> None:
    """Show the wallet: serial, cap, spent, remaining, expiry (ISO 8601), pending logs."""
    client = _device_client(ctx)
    try:
        _show_balance(client.balance(), as_json)
    finally:
        client.close()


def _content_id(text: str) -> bytes:
    """A bytes32 content id: 0x-hex as is, anything else hashed from the name (as `content package` does)."""
    from offchain.content_provider.publisher import content_id_for

    if text.startswith("0x") and len(text) == 66:
        return bytes.fromhex(text[2:])
    return content_id_for(text)


# --- content provider -------------------------------------------------------------------------------------------
@main.group()
def content() -> None:
    """Content provider: package a secure container, register its policy on chain, publish it to an SP."""


@content.command("package")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Content provider settings (member id, cert/key, CA, eth key, rpc_url, deployment_path).")
@click.option("--sp-url", required=True, help="Service provider base URL (https).")
@click.option("--file", "content_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--name", required=True, help="Content name; its keccak256 is the content id.")
@click.option("--version", type=int, default=1, show_default=True)
@click.option("--price", type=int, required=True, help="Price per use in minor units.")
@click.option("--payee", "payees", multiple=True, required=True, help="ADDRESS:BPS, first one gets the remainder.")
@click.option("--title", default="")
@_edge
def content_package(config_path: Path, sp_url: str, content_file: Path, name: str, version: int, price: int,
                    payees: tuple[str, ...], title: str) -> None:
    """Package FILE, register its policy on chain and publish the container to the SP."""
    from offchain.trust.ca import MemberCredentials
    from offchain.content_provider.publisher import ContentProvider, content_id_for
    from offchain.operator.cli_ops import parse_payees
    from offchain.transport.client import SyncJsonClient
    from offchain.transport.wiring import connect_chain, require_path
    from offchain.core.messages import Role
    from offchain.core.settings import BaseServiceSettings, load_settings

    settings = load_settings(BaseServiceSettings, config_path)
    cert, key = require_path(settings.cert_path, "cert_path"), require_path(settings.key_path, "key_path")
    chain = connect_chain(settings)
    creds = MemberCredentials(settings.member_id, Role.CONTENT_PROVIDER, chain.sender,
                              cert.read_bytes(), key.read_bytes())
    sp = SyncJsonClient(sp_url, str(cert), str(key), str(require_path(settings.ca_path, "ca_path")))
    try:
        split = parse_payees(payees)  # ConfigError for anything but ADDRESS:BPS
        published = ContentProvider(creds, chain, sp).publish(
            content_file.read_bytes(), content_id=content_id_for(name), version=version, price=price,
            payees=split, title=title or name)
    finally:
        sp.close()
    _print_json({"content_id": "0x" + published.content_id.hex(), "version": published.version,
                 "policy_id": "0x" + published.policy_id.hex(), "policy_hash": "0x" + published.policy_hash.hex(),
                 "price": published.price})


# --- operator tools ---------------------------------------------------------------------------------------------
@main.command()
@click.option("--rpc", "rpc_url", default=None, help="Use this chain (anvil-compatible) instead of starting anvil.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where keys, databases and logs go (default var/demo-<timestamp>/).")
@click.option("--anvil-port", type=int, default=None, help="Port for the anvil the demo starts (default: free port).")
@click.option("--keep", is_flag=True, help="Leave the chain and the services running after the report (Ctrl-C stops).")
@click.option("--hsm", is_flag=True, help="Keep the CA root, authority, CC, SP and bank keys in a SoftHSM2 token.")
@click.option("--network", type=click.Choice(["anvil", "clique"]), default="anvil", show_default=True,
              help="clique: run the story on a local four-signer Clique network (geth) in the workdir.")
@click.pass_context
def demo(ctx: click.Context, rpc_url: str | None, workdir: Path | None, anvil_port: int | None, keep: bool,
         hsm: bool, network: str) -> None:
    """Run the whole settlement story: chain, deploy, CA, services, deposits, uses, renewals, settlement, payouts."""
    import os

    from offchain.operator.demo import main_demo

    if ctx.find_root().params.get("debug"):
        os.environ["CLEARHOUSE_DEBUG"] = "1"  # the demo handles its own errors; this makes it re-raise them
    sys.exit(main_demo(rpc_url=rpc_url, workdir=workdir, anvil_port=anvil_port, keep=keep, hsm=hsm,
                       network=network))


_CHAIN_OPTIONS = [
    click.option("--rpc", "rpc_url", default="http://127.0.0.1:8545", show_default=True, envvar="CLEARHOUSE_RPC_URL",
                 help="Chain JSON-RPC URL (env CLEARHOUSE_RPC_URL)."),
    click.option("--deployment", "deployment_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 default=Path("deployments/local.json"), show_default=True, envvar="CLEARHOUSE_DEPLOYMENT",
                 help="Deployment file (env CLEARHOUSE_DEPLOYMENT)."),
    click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Local event index cache (default ~/.cache/clearhouse)."),
]


def _chain_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_CHAIN_OPTIONS):
        fn = option(fn)
    return fn


def _output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--csv-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                      help="Write every table as DIR/<section>.csv (stable headers; implies CSV).")(fn)
    fn = click.option("--section", default=None, metavar="NAME",
                      help="--csv: the table to write (e.g. usage-logs, settled-batches, checks); a wrong name "
                           "lists the trail's sections.")(fn)
    fn = click.option("--csv", "as_csv", is_flag=True, help="One CSV table (--section) with a stable header.")(fn)
    return click.option("--json", "as_json", is_flag=True, help="JSON for tools.")(fn)


def _output(as_json: bool, as_csv: bool) -> str:
    return "json" if as_json else "csv" if as_csv else "table"


@main.group()
def audit() -> None:
    """Audit trails read from the chain's events and settlement calldata, re-verifiable from the data alone."""


@audit.command("serial")
@click.argument("serial")
@_chain_options
@_output_option
@click.option("--no-verify", is_flag=True, help="Skip re-verifying signatures.")
@_edge
def audit_serial(serial: str, rpc_url: str, deployment_path: Path, cache_dir: Path | None, as_json: bool,
                 as_csv: bool, section: str | None, csv_dir: Path | None, no_verify: bool) -> None:
    """Everything about one serial: deposits, issue log, renewals, settled batches with decoded usage logs."""
    from offchain.operator.audit.cli import main_serial

    sys.exit(main_serial(rpc_url=rpc_url, deployment_path=deployment_path, serial=serial,
                         output=_output(as_json, as_csv), verify=not no_verify, cache_dir=cache_dir,
                         section=section, csv_dir=csv_dir))


@audit.command("device")
@click.argument("device_address")
@_chain_options
@_output_option
@click.option("--no-verify", is_flag=True, help="Skip re-verifying signatures.")
@_edge
def audit_device(device_address: str, rpc_url: str, deployment_path: Path, cache_dir: Path | None, as_json: bool,
                 as_csv: bool, section: str | None, csv_dir: Path | None, no_verify: bool) -> None:
    """Everything one device did, across all its serials."""
    from offchain.operator.audit.cli import main_device

    sys.exit(main_device(rpc_url=rpc_url, deployment_path=deployment_path, device=device_address,
                         output=_output(as_json, as_csv), verify=not no_verify, cache_dir=cache_dir,
                         section=section, csv_dir=csv_dir))


@audit.command("payee")
@click.argument("payee")
@_chain_options
@_output_option
@_edge
def audit_payee(payee: str, rpc_url: str, deployment_path: Path, cache_dir: Path | None, as_json: bool,
                as_csv: bool, section: str | None, csv_dir: Path | None) -> None:
    """Everything paid to one payee: accruals, transfer requests, bank confirmations."""
    from offchain.operator.audit.cli import main_payee

    sys.exit(main_payee(rpc_url=rpc_url, deployment_path=deployment_path, payee=payee,
                        output=_output(as_json, as_csv), cache_dir=cache_dir,
                        section=section, csv_dir=csv_dir))


@audit.command("content")
@click.argument("content_id")
@_chain_options
@_output_option
@_edge
def audit_content(content_id: str, rpc_url: str, deployment_path: Path, cache_dir: Path | None, as_json: bool,
                  as_csv: bool, section: str | None, csv_dir: Path | None) -> None:
    """Everything about one content: policy versions and splits, every use."""
    from offchain.operator.audit.cli import main_content

    sys.exit(main_content(rpc_url=rpc_url, deployment_path=deployment_path, content_id=content_id,
                          output=_output(as_json, as_csv), cache_dir=cache_dir,
                          section=section, csv_dir=csv_dir))


@audit.command("verify")
@_chain_options
@_output_option
@_edge
def audit_verify(rpc_url: str, deployment_path: Path, cache_dir: Path | None, as_json: bool, as_csv: bool,
                 section: str | None, csv_dir: Path | None) -> None:
    """Re-verify every signature in the whole trail from chain data alone; exit 1 on any failure."""
    from offchain.operator.audit.cli import main_verify

    sys.exit(main_verify(rpc_url=rpc_url, deployment_path=deployment_path, output=_output(as_json, as_csv),
                         cache_dir=cache_dir, section=section, csv_dir=csv_dir))


@main.command()
@_chain_options
@click.option("--cc-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The CC's settings file (its database URL is read from it).")
@click.option("--bank-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The bank's settings file (its database URL is read from it).")
@click.option("--cc-db", "cc_db_url", default=None, help="CC database URL (instead of --cc-config).")
@click.option("--bank-db", "bank_db_url", default=None, help="Bank database URL (instead of --bank-config).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True, help="One CSV table (stable header) of --section.")
@click.option("--section", type=click.Choice(["differences", "totals"]), default="differences", show_default=True,
              help="--csv: which table.")
@click.option("--grace-s", type=int, default=600, show_default=True,
              help="How long a bank deposit may be missing on chain before it is unexplained.")
@_edge
def reconcile(rpc_url: str, deployment_path: Path, cache_dir: Path | None, cc_config: Path | None,
              bank_config: Path | None, cc_db_url: str | None, bank_db_url: str | None, as_json: bool,
              as_csv: bool, section: str, grace_s: int) -> None:
    """Compare chain, CC database and bank ledger unit by unit; exit 1 on any unexplained difference."""
    from offchain.operator.reconcile import main_reconcile

    sys.exit(main_reconcile(rpc_url=rpc_url, deployment_path=deployment_path, cc_db_url=cc_db_url,
                            bank_db_url=bank_db_url, cc_config=cc_config, bank_config=bank_config,
                            output="json" if as_json else "csv" if as_csv else "table", cache_dir=cache_dir,
                            grace_s=grace_s, section=section))


# --- explorer ---------------------------------------------------------------------------------------------------
@main.command()
@_chain_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (loopback by default).")
@click.option("--port", type=int, default=8780, show_default=True, help="Listen port (0 picks a free one).")
@click.option("--confirmations", type=int, default=6, show_default=True,
              help="Depth at which a transaction counts as final.")
@click.option("--network-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Multi-node network file: adds each node's head, peers and signers to the overview.")
@click.option("--cc-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The CC's settings file, for the reconciliation status.")
@click.option("--bank-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The bank's settings file, for the reconciliation status and what the bank paid.")
@click.option("--mtls", is_flag=True, help="Serve HTTPS and require a consortium client certificate.")
@click.option("--ca", "ca_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--cert", "cert_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--crl", "crl_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --mtls: also refuse revoked client certificates.")
@_edge
def explorer(**options: Any) -> None:
    """An auditor's read-only web view: search, lineage flows with re-verified signatures, exports."""
    from offchain.operator.explorer.app import main_explorer

    main_explorer(**options)


# --- certificate authority --------------------------------------------------------------------------------------
@main.group()
def member() -> None:
    """Membership, run by the authority (the CA's Ethereum key)."""


@member.command("revoke")
@click.argument("member_id")
@click.option("--ca-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--authority-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="File holding the authority's hex secp256k1 key.")
@click.option("--release-logs/--no-release-logs", "release_logs", default=False, show_default=True,
              help="For a device: close its issue logs at their settled totals (releaseIssueLog) and return the "
                   "unspent rest to the user's deposits, so the user's next device can be issued it.")
@_chain_options
@_edge
def member_revoke(member_id: str, ca_dir: Path, authority_key_file: Path, release_logs: bool, rpc_url: str,
                  deployment_path: Path, cache_dir: Path | None) -> None:
    """Revoke MEMBER_ID: its addresses on chain first, then its certificates on the CRL, then (--release-logs, a
    device) its issue logs released. Running it again resumes a half-done revocation (see `member status`)."""
    from offchain.operator.revocation import revoke_member
    from offchain.trust.ca import CertificateAuthority

    authority = _authority_chain(authority_key_file, rpc_url, deployment_path)
    status = revoke_member(CertificateAuthority.load(ca_dir), authority, member_id, release_logs=release_logs)
    _print_json({**status.to_json(), "crl": str(ca_dir / "crl.pem")})


@member.command("status")
@click.argument("member_id")
@click.option("--ca-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@_chain_options
@_edge
def member_status(member_id: str, ca_dir: Path, rpc_url: str, deployment_path: Path, cache_dir: Path | None) -> None:
    """Where the revocation of MEMBER_ID stands: on chain, on the CRL, its device's logs still holding money."""
    import os

    from offchain.operator.revocation import revocation_status
    from offchain.trust.ca import CertificateAuthority

    reader = _authority_chain(None, rpc_url, deployment_path, fallback_key=os.urandom(32))  # eth_call only
    _print_json(revocation_status(CertificateAuthority.load(ca_dir), reader, member_id).to_json())


def _authority_chain(key_file: Path | None, rpc_url: str, deployment_path: Path, *,
                     fallback_key: bytes | None = None) -> Any:
    from web3 import Web3

    from offchain.chain import ClearhouseChain, Deployment

    key = fallback_key if key_file is None else bytes.fromhex(key_file.read_text().strip().removeprefix("0x"))
    return ClearhouseChain(Web3(Web3.HTTPProvider(rpc_url)), Deployment.load(deployment_path), key)


@main.group("ca")
def ca_group() -> None:
    """The certificate authority's maintenance (its root key in a file or a PKCS#11 token)."""


@ca_group.command("refresh-crl")
@click.option("--ca-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@_edge
def ca_refresh_crl(ca_dir: Path) -> None:
    """Re-sign the CRL now with a fresh next_update, keeping every revoked entry (run it daily: cron, a timer).

    A token-held root key needs the PIN in CLEARHOUSE_PKCS11_PIN."""
    from offchain.trust.crl import refresh_crl

    _print_json(refresh_crl(ca_dir).to_json())


def _print_json(value: Any, *, err: bool = False) -> None:
    click.echo(json.dumps(value, indent=2, default=str), err=err)


def _register_sim() -> None:
    from offchain.operator.sim.command import sim

    main.add_command(sim)  # `clearhouse sim --seeds A-B [--budget-s S] [--faults ...]`


_register_sim()


def _register_network() -> None:
    from offchain.operator.network_cli import network

    main.add_command(network)  # `clearhouse network up|status|down|stop-node|start-node`


_register_network()


def _register_ops() -> None:
    from offchain.operator.cli_ops import register

    register(main)  # `clearhouse db ...`, lifecycle commands (offchain/operator/cli_ops.py)


_register_ops()

if __name__ == "__main__":
    main()
