"""Failover provider on two anvil nodes: a dead endpoint moves it to the next; an error answer does not."""

from __future__ import annotations

import logging
import socket

import pytest
from web3.exceptions import Web3RPCError

from offchain.chain import AnvilProcess
from offchain.chain.failover import FailoverHTTPProvider, connect
from offchain.core.errors import ChainUnreachable, ConfigError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dead_endpoint_moves_to_the_next_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    with AnvilProcess(extra_args=["--chain-id", "111"]) as first, AnvilProcess(extra_args=["--chain-id", "222"]) as second:
        w3 = connect([first.url, second.url])
        assert (w3.eth.chain_id, w3.provider.current_url) == (111, first.url)  # positive control
        first.stop()
        with caplog.at_level(logging.WARNING, logger="offchain.chain.failover"):
            assert w3.eth.get_block("latest")["number"] == 0  # the POA middleware is harmless on anvil
        assert (w3.provider.current_url, w3.provider.switches) == (second.url, 1)
        assert first.url in caplog.text and f"now using {second.url}" in caplog.text
        assert int(w3.provider.make_request("eth_chainId", [])["result"], 16) == 222


def test_error_answer_does_not_fail_over() -> None:
    with AnvilProcess() as first, AnvilProcess() as second:
        w3 = connect([first.url, second.url])
        assert "error" in w3.provider.make_request("clique_getSigners", ["latest"])  # anvil: method not found
        with pytest.raises(Web3RPCError):
            w3.eth.get_balance("0x" + "12" * 20, "0x" + "ab" * 32)  # unknown block hash: an error answer
        assert (w3.provider.current_url, w3.provider.switches) == (first.url, 0)


def test_no_endpoint_answers_is_chain_unreachable() -> None:
    dead = [f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"]
    provider = FailoverHTTPProvider(dead, timeout_s=2.0)
    with pytest.raises(ChainUnreachable) as info:
        provider.make_request("eth_chainId", [])
    assert info.value.rpc_urls == dead and info.value.method == "eth_chainId"
    assert provider.is_connected() is False


def test_empty_endpoint_list_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        FailoverHTTPProvider([])
    assert info.value.field == "rpc_urls"
