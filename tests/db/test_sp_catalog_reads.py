"""The SP's catalog listing and price look-ups never read container bytes (issue 9, item 7): with large
containers in the catalog, every usage upload and catalog request would otherwise read megabytes per title."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import InvalidRequestError

from offchain.service_provider import store as sp
from offchain.storage import session_scope

CONTAINER = b"\x5a" * 2_000_000  # a 2 MB container


def test_catalog_listing_reads_no_container_bytes(engine: Engine) -> None:
    with session_scope(engine) as session:
        for n in range(3):
            sp.add_catalog_item(session, content_id=bytes([n]) * 32, version=1, container=CONTAINER,
                                sealed_key=b"k" * 60, policy_json={"price": 5, "title": f"t{n}"},
                                policy_hash=bytes(32), now=n)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with session_scope(engine) as session:
        rows = sp.catalog_items(session)
        assert [int(r.policy_json["price"]) for r in rows] == [5, 5, 5]
        with pytest.raises(InvalidRequestError):  # not loaded, and never lazily fetched by accident
            _ = rows[0].container_bytes
    with session_scope(engine) as session:
        assert sp.catalog_item(session, bytes(32), 1).container_bytes == CONTAINER  # the download still gets it
    listing = [s for s in statements if "sp_catalog" in s.lower() and "order by" in s.lower()]
    assert listing and all("container_bytes" not in s for s in listing)
