"""The device's and the SP's views at the finality depth on the four-signer Clique network (period 1 s): the depth is
detected (6, no `finalized` tag, which geth refuses on Clique), a fact fewer than 6 blocks deep is not_final, and
it is trusted once 6 deep; reads pinned to a block number go through the failover provider, first endpoint dead.
"""

from __future__ import annotations

import socket

import pytest
from eth_account import Account
from web3 import Web3

from offchain.chain import ClearhouseChain, deploy
from offchain.chain.failover import connect
from offchain.chain.network import CliqueNetwork
from offchain.core.errors import NotFinal
from offchain.transport.wiring import final_views_for

pytestmark = pytest.mark.network
ROLE_SERVICE_PROVIDER = 2
WAIT_BLOCKS = 20  # bounded: six blocks at one a second, with room for a loaded machine


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_member_registered_fewer_than_six_blocks_ago_is_not_final_then_trusted(network: CliqueNetwork,
                                                                                w3: Web3) -> None:
    faucet, key = network.faucet
    authority = ClearhouseChain(w3, deploy(w3, key, faucet, network="clique"), key)
    reader = ClearhouseChain(connect([_dead_url(), *network.rpc_urls]), authority.deployment, b"\x01" * 32)
    views = final_views_for(reader, None)  # the chain's policy: Clique with four signers, depth 6
    member = Account.create().address
    included = authority.register_member(member, ROLE_SERVICE_PROVIDER, b"\x07" * 32, b"\x09" * 32, 0,
                                         2**40 - 1)["blockNumber"]
    refusals: list[NotFinal] = []
    start = network.head(0)[0]
    while True:
        try:
            active = views.is_active(member, ROLE_SERVICE_PROVIDER)
            break
        except NotFinal as exc:
            refusals.append(exc)
        assert network.head(0)[0] - start <= WAIT_BLOCKS, "the chain did not reach depth 6"
        network.wait_blocks(1)
    assert active is True and views.confirmations == 6
    assert refusals, "the registration was never seen before it was final"
    assert all(exc.confirmations == 6 and exc.fact == "member" and exc.head - included + 1 < 6 for exc in refusals)
    assert w3.eth.block_number - included + 1 >= 6
