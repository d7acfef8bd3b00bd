"""The Clique genesis and node files `CliqueNetwork` writes, checked without starting geth."""

from __future__ import annotations

import pytest

from offchain.chain.network import (
    CliqueNetwork,
    NetworkError,
    _static_nodes_toml,
    clique_extra_data,
    clique_genesis,
    dev_accounts,
)

SIGNERS = ["0x" + "cc" * 20, "0x" + "0a" * 20, "0x" + "b1" * 20]


def test_extra_data_is_vanity_sorted_signers_and_empty_seal() -> None:
    extra = bytes.fromhex(clique_extra_data(SIGNERS)[2:])
    assert len(extra) == 32 + 3 * 20 + 65
    assert extra[:32] == bytes(32) and extra[-65:] == bytes(65)
    assert [extra[32 + 20 * i: 52 + 20 * i].hex() for i in range(3)] == ["0a" * 20, "b1" * 20, "cc" * 20]


def test_genesis_is_london_level_without_shanghai_or_merge() -> None:
    genesis = clique_genesis(4242, 1, SIGNERS, {SIGNERS[0]: 5})
    config = genesis["config"]
    assert config["londonBlock"] == 0 and config["grayGlacierBlock"] == 0 and config["berlinBlock"] == 0
    assert not {"shanghaiTime", "cancunTime", "pragueTime", "terminalTotalDifficulty"} & set(config)
    assert config["clique"] == {"period": 1, "epoch": 30_000} and config["chainId"] == 4242
    assert genesis["alloc"] == {"cc" * 20: {"balance": "0x5"}}


def test_seeded_network_has_reproducible_signers_and_enodes(tmp_path) -> None:
    one = CliqueNetwork(tmp_path / "a", signers=4, seed=b"s", geth="geth")
    two = CliqueNetwork(tmp_path / "b", signers=4, seed=b"s", geth="geth")
    other = CliqueNetwork(tmp_path / "c", signers=4, seed=b"t", geth="geth")
    assert one.signers == two.signers != other.signers
    assert len(set(one.signers)) == 4
    assert [n.enode.split("@")[0] for n in one.nodes] == [n.enode.split("@")[0] for n in two.nodes]
    toml = _static_nodes_toml(one.nodes[1:])
    assert toml.startswith("[Node.P2P]\nStaticNodes = [") and toml.count("enode://") == 3
    assert "127.0.0.1" in toml and one.nodes[0].enode not in toml


def test_dev_faucet_is_the_public_mnemonic_account_zero() -> None:
    assert dev_accounts(1)[0][0] == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def test_period_zero_is_refused(tmp_path) -> None:
    CliqueNetwork(tmp_path, period_s=1, geth="geth")  # positive control
    with pytest.raises(NetworkError) as info:
        CliqueNetwork(tmp_path, period_s=0, geth="geth")
    assert info.value.period_s == 0


def test_up_refuses_a_workdir_folder_it_did_not_create(tmp_path) -> None:
    (tmp_path / "node0").mkdir()
    (tmp_path / "node0" / "mine.txt").write_text("the user's")
    with pytest.raises(NetworkError) as info:
        CliqueNetwork(tmp_path, signers=1, geth="geth").up()
    assert info.value.path == str(tmp_path / "node0")
    assert (tmp_path / "node0" / "mine.txt").read_text() == "the user's"
