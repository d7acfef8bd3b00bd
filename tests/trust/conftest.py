"""SoftHSM2 for the key-backend tests: one token directory per test session, named in SOFTHSM2_CONF before the
PKCS#11 module is first loaded (the module reads its configuration once per process)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

PIN = "4321"
TOKEN = "clearhouse-test"


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The Pkcs11Config of a fresh SoftHSM2 token (skips when Debian's softhsm2 is missing: bin/test installs it)."""
    if shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2 not installed (bin/test installs it with apt)")
    from offchain.trust.keys import Pkcs11Config, init_softhsm, softhsm_module

    previous = os.environ.get("SOFTHSM2_CONF")
    conf = init_softhsm(tmp_path_factory.mktemp("softhsm"), [TOKEN], PIN)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        yield Pkcs11Config(softhsm_module(), TOKEN, PIN)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture()
def key_label(request: pytest.FixtureRequest) -> str:
    """A label no other test uses (the token lives for the whole session)."""
    return request.node.name[:60]


def ca_dir(tmp: Path) -> Path:
    return tmp / "ca"
