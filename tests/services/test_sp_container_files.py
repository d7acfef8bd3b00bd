"""Containers on disk, streamed (issue 9, item 7): a container larger than the HTTP body limit (64 MiB) is
published through the SP's streamed route and downloaded intact by a device; the catalog row holds only the
file's path and SHA-256, never the bytes; the streamed route refuses a container over max_container_bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_service_provider import PRICE, install_test_issue_log, open_device, sp_running  # noqa: F401 (fixtures)
from web3 import Web3

from offchain.content_provider.publisher import JSON_PUBLISH_MAX_BYTES, ContentProvider, content_id_for
from offchain.core.errors import ContainerTooLarge
from offchain.core.settings import ServiceProviderSettings, load_settings
from offchain.service_provider import store as sp_store
from offchain.storage import make_engine, session_scope

BODY_LIMIT = 64 * 1024 * 1024  # offchain.transport.server.new_app's client_max_size

Services = Any


def sp_settings(services: Services) -> ServiceProviderSettings:
    return load_settings(ServiceProviderSettings, services.consortium.settings_paths["sp"])


def test_container_over_the_body_limit_publishes_streamed_and_downloads_intact(sp_running: Services,
                                                                               w3: Web3) -> None:
    studio = sp_running.consortium.member("studio")
    provider = ContentProvider(studio.credentials(), sp_running.chain("studio", w3), sp_running.client("studio", "sp"))
    content = os.urandom(1024) * (BODY_LIMIT // 1024 + 64)  # just over 64 MiB of content: the container is more
    content_id = content_id_for("film-over-the-body-limit")
    provider.publish(content, content_id=content_id, version=1, price=PRICE, payees=[(studio.eth_address, 10_000)],
                     title="Big film")
    settings = sp_settings(sp_running)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as session:
            row = session.scalars(select(sp_store.SpCatalogItem)
                                  .where(sp_store.SpCatalogItem.content_id == content_id)).one()
            assert row.container_bytes is None  # the row holds no container bytes
            path, sha256 = Path(row.container_path), bytes(row.container_sha256)
    finally:
        engine.dispose()
    assert path.stat().st_size > BODY_LIMIT
    assert hashlib.sha256(path.read_bytes()).digest() == sha256 and path.name == sha256.hex()
    assert path.parent.parent == settings.container_dir_path()

    device = open_device(sp_running, "alice-phone")  # its real SyncJsonClient: the streamed download route
    try:
        install_test_issue_log(sp_running, device, cap=10 * PRICE, w3=w3)
        stored = device.download(content_id, 1)
        assert hashlib.sha256(stored.read_bytes()).digest() == sha256  # intact, byte for byte
        assert device.use(content_id, 1) == content
    finally:
        device.close()


def test_streamed_container_over_max_container_bytes_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    """The streamed route writes through ContainerFiles.write_stream: past max_container_bytes it stops with
    ContainerTooLarge (HTTP 413) and the partial temporary file is removed; at the bound it is kept."""
    import asyncio

    from offchain.service_provider.container_files import ContainerFiles

    files = ContainerFiles(tmp_path / "containers", max_bytes=10)

    async def chunks(sizes: list[int]):  # type: ignore[no-untyped-def]
        for size in sizes:
            yield b"x" * size

    with pytest.raises(ContainerTooLarge) as caught:
        asyncio.run(files.write_stream(chunks([4, 4, 4])))
    assert (caught.value.maximum, caught.value.http_status) == (10, 413)
    assert list(files.root.iterdir()) == []
    temp, sha256 = asyncio.run(files.write_stream(chunks([6, 4])))  # positive control: exactly the bound
    assert files.adopt(temp, sha256).read_bytes() == b"x" * 10 and sha256 == hashlib.sha256(b"x" * 10).digest()


def test_small_container_still_goes_through_the_json_route() -> None:
    assert JSON_PUBLISH_MAX_BYTES < BODY_LIMIT  # a small one is one JSON body (base64 adds a third)
