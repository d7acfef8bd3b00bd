"""The signers' keystores geth unlocks at start: an IV whose first byte is zero (1 in 256 keystores) once made geth
panic ("bad IV length") and the network never peered; a node that exits is named at once with its last error line.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from Crypto import Random
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from eth_account import Account
from eth_utils import keccak

from offchain.chain import network as network_module
from offchain.chain.network import PASSWORD, CliqueNetwork, NetworkError, geth_binary, geth_keystore
from offchain.core.errors import ConfigError

KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
ZERO_FIRST = b"\x00" + b"\x5a" * 15  # what the patched random source returns: salt and IV both start with 0x00


@pytest.fixture()
def zero_first_random(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Random, "get_random_bytes", lambda n: (ZERO_FIRST * 2)[:n])


def _geth_decrypt(keystore: dict, password: str) -> bytes:
    """Decrypt as geth's keystore does: the IV's bytes are the AES-CTR counter block, taken as they stand."""
    crypto = keystore["crypto"]
    params = crypto["kdfparams"]
    derived = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(params["salt"]), params["c"],
                                  params["dklen"])
    ciphertext = bytes.fromhex(crypto["ciphertext"])
    assert keccak(derived[16:32] + ciphertext).hex() == crypto["mac"]
    iv = bytes.fromhex(crypto["cipherparams"]["iv"])
    assert len(iv) == 16, f"geth needs a 16-byte IV, got {len(iv)}"
    decryptor = Cipher(algorithms.AES(derived[:16]), modes.CTR(iv)).decryptor()
    return decryptor.update(ciphertext) + decryptor.finalize()


@pytest.mark.usefixtures("zero_first_random")
def test_an_iv_with_a_leading_zero_byte_is_written_as_sixteen_bytes() -> None:
    assert len(bytes.fromhex(Account.encrypt(KEY, PASSWORD)["crypto"]["cipherparams"]["iv"])) == 15  # the cause
    keystore = geth_keystore(KEY, PASSWORD)
    assert keystore["crypto"]["cipherparams"]["iv"] == ZERO_FIRST.hex()
    assert _geth_decrypt(keystore, PASSWORD) == KEY
    assert bytes(Account.decrypt(keystore, PASSWORD)) == KEY


def test_any_keystore_decrypts_the_way_geth_reads_it() -> None:
    keystore = geth_keystore(KEY, PASSWORD)
    assert _geth_decrypt(json.loads(json.dumps(keystore)), PASSWORD) == KEY


def _geth() -> str:
    try:
        return geth_binary()
    except ConfigError as exc:  # geth not built: bin/setup builds it, as tests/network/conftest.py says
        pytest.skip(exc.message)


@pytest.mark.network
@pytest.mark.usefixtures("zero_first_random")
def test_a_signer_whose_keystore_iv_starts_with_zero_seals(tmp_path) -> None:
    net = CliqueNetwork(tmp_path / "net", signers=1, seed=b"zero-iv", geth=_geth())
    try:
        net.up(ready_timeout_s=60)
        assert net.head(0)[0] >= 2
    finally:
        net.down()


@pytest.mark.network
@pytest.mark.usefixtures("zero_first_random")
def test_a_node_that_exits_at_start_is_named_with_its_panic(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keystore as eth-keyfile writes it (15-byte IV): geth panics, and up() says so instead of timing out."""
    monkeypatch.setattr(network_module, "geth_keystore",
                        lambda key, password: Account.encrypt(key, password, kdf="pbkdf2", iterations=1024))
    net = CliqueNetwork(tmp_path / "net", signers=1, seed=b"zero-iv", geth=_geth())
    try:
        with pytest.raises(NetworkError, match=r"node 0 exited: panic: bad IV length") as err:
            net.up(ready_timeout_s=60)
        assert err.value.node == 0 and err.value.exit_code not in (None, 0)
    finally:
        net.down()
