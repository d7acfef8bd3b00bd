"""What `clearhouse serve` checks before it says "listening": the RPC answers (within a timeout), it is the
deployment's chain, the contract has code at the deployment's address, this member is registered on chain with
the service's role and not revoked, and its account holds gas.

The checks read the chain over every endpoint of the settings (`rpc_urls`, else `rpc_url`) through the same
failover provider the service uses (offchain.chain.failover): a first node that is down is skipped, as it is
once the service runs; the check fails only when no endpoint answers.

Each check prints one progress line; the first failure raises `PreflightFailed` naming the check and what to do.
Read-only: nothing here sends a transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from offchain.core.errors import ClearhouseError
from offchain.core.messages import Role

DEFAULT_TIMEOUT_S = 5.0
ROLE_OF = {"clearing_center": Role.CLEARING_CENTER, "service_provider": Role.SERVICE_PROVIDER, "bank": Role.BANK,
           "device": Role.DEVICE}


class PreflightFailed(ClearhouseError):
    """A service cannot start: `check` names what failed, `hint` what to do."""

    code = "preflight_failed"
    http_status = 500

    def __init__(self, message: str, *, check: str | None = None, rpc_url: str | None = None,
                 address: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.rpc_url = rpc_url
        self.address = address
        self.hint = hint


@dataclass(frozen=True)
class Check:
    name: str
    detail: str


def member_address(settings: Any) -> str:
    from eth_account import Account

    key = settings.eth_signing_key()
    return Account.from_key(key).address if isinstance(key, (bytes, bytearray)) else key.address


def preflight(settings: Any, *, timeout_s: float = DEFAULT_TIMEOUT_S,
              echo: Callable[[str], None] = lambda _line: None) -> list[Check]:
    """Run every check in order; returns them (each also echoed), or raises PreflightFailed at the first failure."""
    from offchain.chain import Deployment
    from offchain.chain.failover import connect

    deployment = Deployment.load(settings.deployment_path)
    urls = settings.chain_urls() if hasattr(settings, "chain_urls") else [settings.rpc_url]
    w3 = connect(urls, timeout_s=timeout_s)  # POA extraData middleware included (Clique)
    checks: list[Check] = []

    def passed(name: str, detail: str) -> None:
        checks.append(Check(name, detail))
        echo(f"ok  {name:<9} {detail}")

    chain_id, head = _rpc(w3, urls, timeout_s)
    rpc_url = w3.provider.current_url  # the endpoint that answered: every later read goes there first
    skipped = urls[:urls.index(rpc_url)]
    passed("rpc", f"{rpc_url} answers: chain id {chain_id}, head block {head}"
                  + (f" ({', '.join(skipped)} did not answer)" if skipped else ""))
    expected_ids = {deployment.chain_id} | ({settings.chain_id} if settings.chain_id else set())
    if expected_ids != {chain_id}:
        raise PreflightFailed(f"the node at {rpc_url} is chain {chain_id}; the deployment file "
                              f"{settings.deployment_path} is for chain {deployment.chain_id}",
                              check="chain_id", rpc_url=rpc_url,
                              hint="point rpc_url at the deployment's network, or deployment_path at this one's")
    passed("chain_id", f"{chain_id} matches {settings.deployment_path}")
    address = w3.to_checksum_address(deployment.address)
    if not w3.eth.get_code(address):
        raise PreflightFailed(f"no contract code at {address} on chain {chain_id} (a restarted dev chain forgets "
                              "its deployments)", check="contract_code", rpc_url=rpc_url, address=address,
                              hint="deploy again (`ape run deploy` or `clearhouse demo`) and update deployment_path")
    passed("contract", f"code at {address}")
    account = member_address(settings)
    _member(w3, deployment, account, settings)
    passed("member", f"{settings.member_id} ({account}) active as {ROLE_OF[settings.ROLE_NAME].name.lower()}")
    balance = int(w3.eth.get_balance(account))
    if balance == 0:
        raise PreflightFailed(f"{settings.member_id}'s account {account} has no gas (balance 0 wei)",
                              check="gas", rpc_url=rpc_url, address=account,
                              hint="fund it from the network's faucet or treasury; on a dev chain "
                                   "`clearhouse member add` funds new members")
    passed("gas", f"{balance / 10**18:.4f} ETH")
    return checks


def _rpc(w3: Any, urls: list[str], timeout_s: float) -> tuple[int, int]:
    """Chain id and head over the failover provider: the first endpoint that answers; PreflightFailed if none."""
    import requests

    try:
        return int(w3.eth.chain_id), int(w3.eth.block_number)
    except Exception as exc:  # noqa: BLE001 - any transport failure is the same answer: the node is not usable
        # ChainUnreachable names each endpoint's failure: "<url>: ReadTimeout; <url>: ConnectionError"
        silent = isinstance(exc, (requests.exceptions.Timeout, TimeoutError)) or (
            "Timeout" in str(exc) and "ConnectionError" not in str(exc))
        reason = "did not answer" if silent else f"refused or failed ({type(exc).__name__})"
        where = f"the chain node at {urls[0]}" if len(urls) == 1 else f"none of the {len(urls)} chain nodes"
        raise PreflightFailed(f"{where} {reason} within {timeout_s:g} s: {exc}"[:400],
                              check="rpc", rpc_url=", ".join(urls),
                              hint="start the node or fix rpc_url / rpc_urls (CLEARHOUSE_RPC_URL, "
                                   "CLEARHOUSE_RPC_URLS); `clearhouse serve --chain-timeout-s` sets the wait") from None


def _member(w3: Any, deployment: Any, account: str, settings: Any) -> None:
    contract = w3.eth.contract(address=w3.to_checksum_address(deployment.address), abi=deployment.abi)
    role, revoked, _valid_from, valid_until, *_rest = contract.functions.member(account).call()
    expected = ROLE_OF[settings.ROLE_NAME]
    if int(role) == 0:
        raise PreflightFailed(f"{settings.member_id}'s account {account} is not registered on chain",
                              check="member", rpc_url=w3.provider.current_url, address=account,
                              hint="register it: `clearhouse member add <id> --role ...` (the authority's key)")
    if revoked or int(role) != int(expected):
        state = "revoked" if revoked else f"registered as {Role(int(role)).name.lower()}"
        raise PreflightFailed(f"{settings.member_id}'s account {account} is {state}; this service needs an active "
                              f"{expected.name.lower()}", check="member", rpc_url=w3.provider.current_url,
                              address=account,
                              hint="issue a new member (certificate and key) for this service")
    head_time = int(w3.eth.get_block("latest")["timestamp"])
    if int(valid_until) and int(valid_until) < head_time:
        raise PreflightFailed(f"{settings.member_id}'s on-chain registration expired at {valid_until}",
                              check="member", rpc_url=w3.provider.current_url, address=account,
                              hint="renew the member's certificate and registration")


__all__ = ["preflight", "PreflightFailed", "Check", "member_address", "DEFAULT_TIMEOUT_S"]
