"""The device's and the SP's chain reads at the finality depth (`offchain.chain.views.FinalViews`), and the device's
policy reader over several RPC endpoints with failover.

On the session anvil (`chain_env`, reverted after each test) with confirmations > 0, blocks mined by `anvil_mine`:
a fact included k < N blocks ago is `NotFinal` (named, with its fields), at N blocks it is trusted. The bounded
wait is tested on a scripted chain whose head moves only when the views sleep (no wall clock).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak

from offchain.chain.views import FinalViews, IssueLogInfo, PolicyInfo, final_block
from offchain.core.errors import ChainUnreachable, ContractReverted, NotFinal
from offchain.core.messages import policy_id as policy_id_of
from offchain.device.client import RegisteredPolicy, chain_policy_reader

ROLE_CONTENT_PROVIDER = 3
ALICE = keccak(text="alice")  # the user the session's `device` actor is registered for (tests/conftest.py)


def _mine(w3: Any, blocks: int) -> None:
    w3.provider.make_request("anvil_mine", [hex(blocks)])


def _register_policy(chain_env: Any, name: str) -> tuple[bytes, bytes]:
    """A policy registered now (included in the head block); returns (policy id, policy hash)."""
    cp = chain_env.client("content_provider")
    content_id, digest = keccak(text=f"content:{name}"), keccak(text=f"policy-hash:{name}")
    cp.register_policy(content_id, 1, 100, [(cp.sender, 10_000)], digest)
    return policy_id_of(content_id, 1), digest


def _issue(chain_env: Any, name: str) -> bytes:
    """A serial issued now to the `device` actor (Alice's), its deposit recorded just before."""
    serial = keccak(text=f"serial:{name}")
    chain_env.client("bank").record_deposit(keccak(text=f"deposit:{name}"), ALICE, 1_000, keccak(text="ref"))
    chain_env.client("clearing_center").issue(serial, chain_env.actors["device"].address, ALICE, 500,
                                              chain_env.timestamp() + 86_400)
    return serial


def _dead_url() -> str:
    """A loopback port nobody listens on (connection refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- on anvil ----------------------------------------------------------------------------------------------------
def test_final_block_counts_like_the_finality_tracker() -> None:
    assert [final_block(10, n) for n in (0, 1, 2, 6)] == [10, 10, 9, 5]
    assert final_block(3, 6) == 0


def test_policy_included_fewer_than_n_blocks_ago_is_not_final_then_trusted(chain_env: Any) -> None:
    views = FinalViews(chain_env.client("provider"), 3)
    policy_id, digest = _register_policy(chain_env, "depth")
    included = chain_env.w3.eth.block_number
    for k in (1, 2):  # included k blocks deep (the including block counts): not trusted
        with pytest.raises(NotFinal) as info:
            views.policy(policy_id)
        assert (info.value.code, info.value.fact, info.value.subject) == ("not_final", "policy", policy_id)
        assert (info.value.confirmations, info.value.head, info.value.final_block) == (3, included + k - 1,
                                                                                        included + k - 3)
        assert info.value.http_status == 503
        _mine(chain_env.w3, 1)
    found = views.policy(policy_id)  # 3 blocks deep
    assert isinstance(found, PolicyInfo) and found.policy_hash == digest


def test_unknown_policy_is_the_contracts_answer_not_a_wait(chain_env: Any) -> None:
    views = FinalViews(chain_env.client("provider"), 3)
    policy_id, _digest = _register_policy(chain_env, "control")
    _mine(chain_env.w3, 2)
    assert views.policy(policy_id).provider == chain_env.actors["content_provider"].address  # positive control
    with pytest.raises(ContractReverted) as info:
        views.policy(keccak(text="never registered"))
    assert info.value.error_name == "UnknownPolicy"


def test_zero_confirmations_reads_the_latest_block_as_before(chain_env: Any) -> None:
    policy_id, digest = _register_policy(chain_env, "anvil-default")
    assert FinalViews(chain_env.client("provider"), 0).policy(policy_id).policy_hash == digest
    assert FinalViews(chain_env.client("provider"), 1).policy(policy_id).policy_hash == digest


def test_serial_issued_fewer_than_n_blocks_ago_is_not_final_then_its_device(chain_env: Any) -> None:
    views = FinalViews(chain_env.client("provider"), 4)
    never = views.issue_log(keccak(text="serial:nowhere"))
    assert not never.exists  # on chain nowhere: the empty view, at once
    serial = _issue(chain_env, "depth")
    for _ in range(3):
        with pytest.raises(NotFinal) as info:
            views.issue_log(serial)
        assert (info.value.fact, info.value.subject, info.value.confirmations) == ("issue_log", serial, 4)
        _mine(chain_env.w3, 1)
    view = views.issue_log(serial)
    assert isinstance(view, IssueLogInfo) and view.device == chain_env.actors["device"].address


def test_member_registration_waits_for_the_depth_revocation_counts_at_once(chain_env: Any) -> None:
    from eth_account import Account

    authority = chain_env.client("authority")
    views = FinalViews(chain_env.client("provider"), 3)
    newcomer = Account.create().address
    assert views.is_active(newcomer, ROLE_CONTENT_PROVIDER) is False  # never registered: False, not a wait
    authority.register_member(newcomer, ROLE_CONTENT_PROVIDER, keccak(text="newcomer"), keccak(text="cert"),
                              0, 2**40 - 1)
    with pytest.raises(NotFinal) as info:
        views.is_active(newcomer, ROLE_CONTENT_PROVIDER)
    assert (info.value.fact, info.value.subject) == ("member", newcomer)
    _mine(chain_env.w3, 2)
    assert views.is_active(newcomer, ROLE_CONTENT_PROVIDER) is True
    authority.revoke_member(newcomer)
    assert views.is_active(newcomer, ROLE_CONTENT_PROVIDER) is False  # included a block ago: refused already


class _CountingReader:
    """The provider's chain client, counting the `isActive` reads (the one call a member check makes)."""

    def __init__(self, chain: Any) -> None:
        self.chain, self.reads = chain, 0

    def is_active(self, account: str, role: int, *, block: int | str = "latest") -> bool:
        self.reads += 1
        return bool(self.chain.is_active(account, role, block=block))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.chain, name)


def test_a_member_final_once_costs_one_read_per_check_and_a_revocation_still_counts_at_once(chain_env: Any) -> None:
    """The SP checks its TLS peer on every request: once a member is active at the depth, a check reads only the
    head (one call, where it was three: the head number, the head, the depth), and a revocation included a block
    ago is refused at the next check."""
    from eth_account import Account

    authority = chain_env.client("authority")
    reader = _CountingReader(chain_env.client("provider"))
    heads: list[int] = []
    views = FinalViews(reader, 3, head=lambda: heads.append(1) or int(chain_env.w3.eth.block_number))
    member = Account.create().address
    authority.register_member(member, ROLE_CONTENT_PROVIDER, keccak(text="member"), keccak(text="cert"), 0,
                              2**40 - 1)
    _mine(chain_env.w3, 2)
    assert views.is_active(member, ROLE_CONTENT_PROVIDER) is True
    assert (reader.reads, len(heads)) == (2, 1)  # the first check: the head and the depth
    for _ in range(3):
        assert views.is_active(member, ROLE_CONTENT_PROVIDER) is True
    assert (reader.reads, len(heads)) == (5, 1)  # then one read each
    assert views.is_active(member, 2) is False  # another role is its own question
    authority.revoke_member(member)
    assert views.is_active(member, ROLE_CONTENT_PROVIDER) is False
    assert views.is_active(member, ROLE_CONTENT_PROVIDER) is False  # forgotten: the full check, still False


def test_device_policy_reader_reads_through_the_second_rpc_url_when_the_first_is_dead(chain_env: Any,
                                                                                     tmp_path: Path) -> None:
    policy_id, digest = _register_policy(chain_env, "failover")
    live = str(chain_env.w3.provider.endpoint_uri)
    path = chain_env.deployment.write(tmp_path / "deployment.json")
    dead = _dead_url()
    with pytest.raises(ChainUnreachable):  # control: the dead node alone answers nothing
        chain_policy_reader([dead], path, confirmations=0, wait_s=0)(policy_id)
    read = chain_policy_reader([dead, live], path, confirmations=0, wait_s=0)
    assert read(policy_id) == RegisteredPolicy(digest, chain_env.actors["content_provider"].address)
    assert chain_policy_reader(live, path, confirmations=0)(policy_id) == RegisteredPolicy(  # rpc_url: one URL
        digest, chain_env.actors["content_provider"].address)


def test_device_policy_reader_at_depth_is_not_final_then_trusted(chain_env: Any, tmp_path: Path) -> None:
    policy_id, digest = _register_policy(chain_env, "device-depth")
    path = chain_env.deployment.write(tmp_path / "deployment.json")
    read = chain_policy_reader([_dead_url(), str(chain_env.w3.provider.endpoint_uri)], path, confirmations=2,
                               wait_s=0)
    with pytest.raises(NotFinal) as info:
        read(policy_id)
    assert (info.value.fact, info.value.subject, info.value.confirmations) == ("policy", policy_id, 2)
    _mine(chain_env.w3, 1)
    assert read(policy_id) == RegisteredPolicy(digest, chain_env.actors["content_provider"].address)
    assert read(keccak(text="never registered")) is None


# --- the bounded wait, on a scripted chain --------------------------------------------------------------------------
@dataclass
class ScriptedChain:
    """A serial included in block `included`; the head moves one block each time the views sleep."""

    included: int
    head: int
    sleeps: list[float] = field(default_factory=list)
    w3: Any = None
    deployment: Any = None

    def issue_log(self, serial: bytes, *, block: Any = "latest") -> IssueLogInfo:
        number = self.head if block == "latest" else int(block)
        if self.deployment is not None and number < self.deployment.deploy_block:
            raise ChainUnreachable("issueLog: node error: Could not decode ... return data: b''", function="issueLog")
        device = "0x" + ("ab" * 20 if number >= self.included else "00" * 20)
        return IssueLogInfo(serial, device, bytes(32), 1, 0, 0, 0, 0, False)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.head += 1


def _views(chain: ScriptedChain, confirmations: int, wait_s: float) -> FinalViews:
    clock = {"now": 0.0}

    def sleep(seconds: float) -> None:
        clock["now"] += seconds
        chain.sleep(seconds)

    return FinalViews(chain, confirmations, wait_s=wait_s, poll_s=1.0, head=lambda: chain.head,  # type: ignore[arg-type]
                      monotonic=lambda: clock["now"], sleep=sleep)


def test_wait_returns_once_the_fact_reaches_the_depth() -> None:
    chain = ScriptedChain(included=100, head=100)
    view = _views(chain, 6, wait_s=10).issue_log(b"s")
    assert view.exists and chain.head == 105 and len(chain.sleeps) == 5  # final when head - 100 + 1 == 6


def test_wait_ends_in_not_final_when_the_chain_does_not_reach_the_depth_in_time() -> None:
    chain = ScriptedChain(included=100, head=100)
    with pytest.raises(NotFinal) as info:
        _views(chain, 6, wait_s=3).issue_log(b"s")
    assert (info.value.head, info.value.final_block, len(chain.sleeps)) == (103, 98, 3)


def test_confirmations_callable_is_asked_once_on_first_read() -> None:
    asked: list[int] = []
    chain = ScriptedChain(included=1, head=50)

    def detect() -> int:
        asked.append(1)
        return 6

    views = FinalViews(chain, detect, head=lambda: chain.head)  # type: ignore[arg-type]
    assert asked == []  # building it asks nothing (a device is built offline)
    assert views.issue_log(b"s").exists and views.issue_log(b"s").exists and asked == [1]


def test_a_contract_deployed_fewer_than_n_blocks_ago_has_nothing_final_yet() -> None:
    from types import SimpleNamespace

    chain = ScriptedChain(included=100, head=101, deployment=SimpleNamespace(deploy_block=99))
    with pytest.raises(NotFinal) as info:  # not the node's "no code there" at the depth (block 96)
        _views(chain, 6, wait_s=0).issue_log(b"s")
    assert (info.value.head, info.value.final_block) == (101, 96)
    assert _views(chain, 6, wait_s=4).issue_log(b"s").exists and chain.head == 105
