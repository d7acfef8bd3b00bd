"""`clearhouse explorer --mtls`: only holders of a consortium certificate read it. A member's client certificate
gets the overview (the positive control); no certificate, another CA's certificate and a revoked member's
certificate are refused."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any as ChainWorld  # the `world` fixture of tests/operator/conftest.py

import pytest
from eth_account import Account
from explorer_kit import explorer_process, rpc_url

from offchain.core.messages import Role
from offchain.operator.explorer import ExplorerConfig
from offchain.trust.ca import CertificateAuthority
from offchain.trust.tls import client_ssl_context


def _member(ca: CertificateAuthority, directory: Path, member_id: str, role: Role) -> tuple[Path, Path]:
    return ca.issue_member(member_id, role, Account.create().address).write(directory / member_id)


def _get(url: str, context: ssl.SSLContext) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=20) as response:  # noqa: S310 - our test URL
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("explorer-mtls")
    ca = CertificateAuthority.create(base / "ca")
    (base / "root.pem").write_bytes(ca.root_pem)
    paths = {"ca": base / "root.pem", "crl": base / "crl.pem"}
    for name, role in (("explorer-host", Role.CLEARING_CENTER), ("auditor-bank", Role.BANK),
                       ("revoked-sp", Role.SERVICE_PROVIDER)):
        paths[f"{name}.cert"], paths[f"{name}.key"] = _member(ca, base, name, role)
    ca.revoke("revoked-sp")
    paths["crl"].write_bytes(ca.crl_pem())
    other = CertificateAuthority.create(base / "other-ca", name="Another Root")
    paths["stranger.cert"], paths["stranger.key"] = _member(other, base, "stranger", Role.BANK)
    return paths


def test_mtls_serves_members_and_refuses_everyone_else(world: ChainWorld, consortium: dict[str, Path],
                                                       tmp_path: Path) -> None:
    c = consortium
    config = ExplorerConfig(rpc_url=rpc_url(world.w3), deployment_path=world.deployment_path, cache_dir=tmp_path)
    with explorer_process(config, "--mtls", "--ca", str(c["ca"]), "--cert", str(c["explorer-host.cert"]),
                          "--key", str(c["explorer-host.key"]), "--crl", str(c["crl"])) as url:
        assert url.startswith("https://127.0.0.1:")
        member = client_ssl_context(c["auditor-bank.cert"], c["auditor-bank.key"], c["ca"])
        status, body = _get(url + "/", member)
        assert status == 200 and 'id="totals"' in body
        revoked = client_ssl_context(c["revoked-sp.cert"], c["revoked-sp.key"], c["ca"])
        status, body = _get(url + "/", revoked)
        assert status == 401 and "revoked" in body.lower()  # CertificateRevoked
        anonymous = ssl.create_default_context(cafile=str(c["ca"]))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            _get(url + "/", anonymous)
        stranger = client_ssl_context(c["stranger.cert"], c["stranger.key"], c["ca"])
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            _get(url + "/", stranger)


def test_mtls_without_its_certificate_is_a_config_error(world: ChainWorld, tmp_path: Path) -> None:
    config = ExplorerConfig(rpc_url=rpc_url(world.w3), deployment_path=world.deployment_path, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="--mtls needs --ca, --cert, --key"):
        with explorer_process(config, "--mtls"):
            pass
