"""Shared root fixtures: one anvil (paris) per session, the compiled contracts, and a deployed Clearhouse per test.

Fixtures (all chain fixtures need the anvil binary on PATH: `source bin/env.sh`):
- `anvil` (session): a running `offchain.chain.AnvilProcess` (`.url`); `w3` (session): Web3 on it.
- `compiled` (session): `offchain.chain.compile_contracts(CONTRACTS_ROOT)` (cached in .build/; CLEARHOUSE_CONTRACTS_ROOT,
  default the project root, is how `make mutate` tests a mutated copy).
- `actors` (session): name -> `Actor(name, key, address)` for authority, deployer, clearing_center, provider (the
  service provider), content_provider, bank, device, device2, payee2 (a non-member payee) and attacker
  (keys salted per session, funded with anvil_setBalance).
- `base_deployment` (session): Clearhouse deployed with every member role registered (validity 0..2**40-1);
  devices are `device` (user `keccak("alice")`) and `device2` (`keccak("bob")`), see DEVICE_USERS; `attacker` and `payee2` are not members.
- `fresh_chain_env` (session): a factory of `ChainEnv`s on a Clearhouse deployed just now (the stateful test).
- `revert_chain` (session): `revert_to(w3, box)`: evm_revert to the snapshot in `box`, clock back on the wall clock.
- `chain_env` (function): the chain reverted to the state right after `base_deployment` (evm_snapshot/evm_revert),
  as a `ChainEnv` with `.client(name)` -> `ClearhouseChain` signing as that actor (fresh nonces per test).
- actor fixtures `authority`, `clearing_center`, `provider`, `content_provider`, `bank`, `device`, `attacker`.
Hypothesis profiles: "ci" (default, small), "deep" (HYPOTHESIS_PROFILE=deep) and "mutate" (no shrinking).
"""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import requests
import structlog
from eth_account import Account
from eth_utils import keccak
from hypothesis import HealthCheck, Phase, settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from web3 import Web3

from offchain.chain import AnvilProcess, ClearhouseChain, Deployment, compile_contracts, deploy, deploy_artifact

ROOT = Path(__file__).resolve().parents[1]
# Where the contracts are compiled from: `make mutate` (tools/mutate) points it at a mutated copy of the tree.
CONTRACTS_ROOT = Path(os.environ.get("CLEARHOUSE_CONTRACTS_ROOT", ROOT))

settings.register_profile(
    "ci", max_examples=50, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    # CLEARHOUSE_DEEP_EXAMPLES bounds a run to fit a time window; the profile's own size is 1,000 x 100.
    "deep", max_examples=int(os.environ.get("CLEARHOUSE_DEEP_EXAMPLES", "1000")), stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    # `make mutate`: a mutant is killed by the first failure; shrinking and explaining it would only cost time
    "mutate", max_examples=30, stateful_step_count=30, deadline=None, database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ACTOR_NAMES = ("authority", "deployer", "clearing_center", "provider", "content_provider", "bank", "device",
               "device2", "payee2", "attacker")
MEMBER_ROLES = {"clearing_center": 1, "provider": 2, "content_provider": 3, "bank": 4, "device": 5, "device2": 5}
VALID_UNTIL_MAX = 2**40 - 1
# the user each device is registered for on chain (issue and renew spend only that user's deposits on it)
DEVICE_USERS = {"device": keccak(text="alice"), "device2": keccak(text="bob")}


@dataclass(frozen=True)
class Actor:
    """A test identity: its Ethereum key and checksummed address."""

    name: str
    key: bytes
    address: str


@dataclass(frozen=True)
class ChainEnv:
    """A deployed Clearhouse on the session anvil, reset for this test; `client(name)` signs as that actor."""

    w3: Web3
    deployment: Deployment
    actors: dict[str, Actor]
    _clients: dict[str, ClearhouseChain] = field(default_factory=dict, repr=False)

    def client(self, name: str) -> ClearhouseChain:
        if name not in self._clients:
            self._clients[name] = ClearhouseChain(self.w3, self.deployment, self.actors[name].key)
        return self._clients[name]

    def timestamp(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])


# Per-session salt: a client of another test session that ends up on our anvil's port (its own anvil lost the
# port race) signs with its own session's keys, whose accounts hold no ether here, so it cannot change our chain.
ACTOR_SALT = secrets.token_hex(8)


def make_actor(name: str) -> Actor:
    key = keccak(text=f"clearhouse-test-actor:{ACTOR_SALT}:{name}")
    return Actor(name, key, Account.from_key(key).address)


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilProcess]:
    """Our own anvil, proven ours: `free_port()` only says a port was free a moment ago, and when another test
    session's anvil wins that port ours exits while the readiness probe already talks to theirs, so both
    sessions (the actor keys are deterministic) would send transactions to one chain ("nonce too low",
    PolicyExists in the stateful test). Each start asks for a random number of dev accounts and checks it."""
    for _ in range(5):
        marker = 11 + secrets.randbelow(200)
        node = AnvilProcess(hardfork="paris", extra_args=["--accounts", str(marker)]).start()
        if len(node.web3().eth.accounts) == marker:
            break
        node.stop()
    else:
        raise RuntimeError("could not start an anvil of our own (five port collisions in a row)")
    with node:
        yield node


@pytest.fixture(scope="session")
def w3(anvil: AnvilProcess) -> Web3:
    # trust_env=False: requests would otherwise scan the environment for proxy settings on every RPC (a tenth
    # of the stateful test's time); the node is on loopback
    session = requests.Session()
    session.trust_env = False
    return Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60}, session=session))


@pytest.fixture(scope="session")
def compiled() -> dict[str, dict]:
    return compile_contracts(CONTRACTS_ROOT)


@pytest.fixture(scope="session")
def actors(w3: Web3) -> dict[str, Actor]:
    result = {name: make_actor(name) for name in ACTOR_NAMES}
    for actor in result.values():
        w3.provider.make_request("anvil_setBalance", [actor.address, hex(10**24)])
    return result


@pytest.fixture(scope="session")
def base_deployment(w3: Web3, compiled: dict[str, dict], actors: dict[str, Actor]) -> Deployment:
    """Deploys Clearhouse and registers every member once per session."""
    return deploy_with_members(w3, actors)


def deploy_with_members(w3: Web3, actors: dict[str, Actor], template: Deployment | None = None) -> Deployment:
    """A new Clearhouse with every member of MEMBER_ROLES registered (devices for their DEVICE_USERS); with a
    `template`, the same compiled contract again without recompiling or re-reading the artifacts."""
    if template is None:
        deployment = deploy(w3, actors["deployer"].key, actors["authority"].address, root=CONTRACTS_ROOT)
    else:
        artifact = {"abi": template.abi, "bytecode": _BYTECODE[template.address]}
        address, receipt = deploy_artifact(w3, actors["deployer"].key, artifact, [actors["authority"].address])
        deployment = replace(template, address=address, deploy_block=receipt["blockNumber"])
    authority = ClearhouseChain(w3, deployment, actors["authority"].key)
    binds_users = "user_id_hash" in inspect.signature(ClearhouseChain.register_member).parameters
    for name, role in MEMBER_ROLES.items():
        extra = {"user_id_hash": DEVICE_USERS[name]} if binds_users and name in DEVICE_USERS else {}
        authority.register_member(actors[name].address, role, keccak(text=name), keccak(text=f"cert:{name}"),
                                  0, VALID_UNTIL_MAX, **extra)
    return deployment


@pytest.fixture(scope="session")
def fresh_chain_env(w3: Web3, compiled: dict[str, dict], actors: dict[str, Actor]) -> Callable[[], ChainEnv]:
    """A factory of ChainEnvs, each on a Clearhouse deployed just now (no snapshot, no revert): the stateful test
    takes one per example, so no example can see another's transactions, whatever a revert keeps or drops."""
    template = deploy_with_members(w3, actors)
    _BYTECODE[template.address] = compiled["Clearhouse"]["bytecode"]
    return lambda: ChainEnv(w3, deploy_with_members(w3, actors, template), actors)


_BYTECODE: dict[str, str] = {}


@pytest.fixture(scope="session")
def _base_snapshot(w3: Web3, base_deployment: Deployment) -> list[str]:
    """A one-element box holding the snapshot id of the post-deployment state (evm_revert consumes ids)."""
    return [w3.provider.make_request("evm_snapshot", [])["result"]]


def revert_to(w3: Web3, box: list[str]) -> None:
    """Revert anvil to the snapshot in `box`, put its clock back on the wall clock, and store a fresh snapshot of
    that same state in `box`.

    `evm_revert` also rewinds anvil's clock to the snapshot's time, so without `evm_setTime` every revert would
    add the time since the snapshot to a growing lag: after 300 s, members registered by `provision` with
    `validFrom = now - 300` are not active yet, and certificates checked against the chain drift. The services
    read the wall clock, so the chain must too (tests/contracts/test_chain_clock.py is the regression test).
    """
    if not w3.provider.make_request("evm_revert", [box[0]])["result"]:
        raise RuntimeError(f"evm_revert({box[0]}) failed: snapshot lost")
    # a transaction still in the pool (e.g. queued behind a nonce gap) would be mined into the next test
    w3.provider.make_request("anvil_dropAllTransactions", [])
    resync_clock(w3)
    box[0] = w3.provider.make_request("evm_snapshot", [])["result"]


def resync_clock(w3: Web3) -> None:
    """Make anvil's next block carry the wall-clock time (never earlier than its latest block)."""
    latest = int(w3.eth.get_block("latest")["timestamp"])
    w3.provider.make_request("evm_setTime", [max(int(time.time()), latest)])
    # and mine it: tests take "now" from the latest block (ChainEnv.timestamp), which must be the clock the next
    # transaction sees, not the snapshot's time (a snapshot minutes old made `validUntil = now + 100` already past)
    w3.provider.make_request("evm_mine", [])


@pytest.fixture(scope="session")
def revert_chain() -> Callable[[Web3, list[str]], None]:
    """`revert_to` as a fixture (conftest modules are not importable), for tests that snapshot by themselves."""
    return revert_to


@pytest.fixture()
def chain_env(w3: Web3, base_deployment: Deployment, actors: dict[str, Actor],
              _base_snapshot: list[str]) -> Iterator[ChainEnv]:
    yield ChainEnv(w3, base_deployment, actors)
    revert_to(w3, _base_snapshot)


@pytest.fixture()
def authority(actors: dict[str, Actor]) -> Actor:
    return actors["authority"]


@pytest.fixture()
def clearing_center(actors: dict[str, Actor]) -> Actor:
    return actors["clearing_center"]


@pytest.fixture()
def provider(actors: dict[str, Actor]) -> Actor:
    return actors["provider"]


@pytest.fixture()
def content_provider(actors: dict[str, Actor]) -> Actor:
    return actors["content_provider"]


@pytest.fixture()
def bank(actors: dict[str, Actor]) -> Actor:
    return actors["bank"]


@pytest.fixture()
def device(actors: dict[str, Actor]) -> Actor:
    return actors["device"]


@pytest.fixture()
def attacker(actors: dict[str, Actor]) -> Actor:
    return actors["attacker"]


# --- databases: SQLite and PostgreSQL (bin/test starts PostgreSQL and sets CLEARHOUSE_TEST_PG_URL) ---------------
PG_ENV = "CLEARHOUSE_TEST_PG_URL"


@pytest.fixture(scope="module")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test module (CREATE DATABASE t_<random>, dropped at the end)."""
    admin_url = os.environ.get(PG_ENV)
    if not admin_url:
        pytest.skip(f"{PG_ENV} not set (bin/test sets it)")
    name = "t_" + secrets.token_hex(6)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL with no tables yet: a temp SQLite file, or the module's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("pg_database_url"))


# --- logging: `configure_logging` binds structlog and the root logger to the stream of the moment -----------------
@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Undo a test's `configure_logging`: its stream (pytest's capture) is closed once the test ends."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(handler)
