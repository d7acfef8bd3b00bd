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


def _provider(engine: Engine) -> "ServiceProvider":
    from offchain.core.messages import Domain
    from offchain.service_provider.agent import ServiceProvider

    return ServiceProvider(engine=engine, domain=Domain(chain_id=1, verifying_contract="0x" + "00" * 20),
                           private_key=b"\x01" * 32, cert_pem=b"", verifier=None,  # type: ignore[arg-type]
                           catalog_key=b"\x02" * 32)


def _fill_catalog(engine: Engine, items: int) -> None:
    from sqlalchemy import insert

    from offchain.core.messages import policy_id

    rows = [{"content_id": n.to_bytes(32, "big"), "version": 1, "policy_id": policy_id(n.to_bytes(32, "big"), 1),
             "container_path": f"/c/{n}", "content_key_encrypted": b"k", "policy_json": {"price": n, "title": "t"},
             "policy_hash": bytes(32), "created_at": n} for n in range(1, items + 1)]
    with session_scope(engine) as session:
        session.execute(insert(sp.SpCatalogItem), rows)


@pytest.mark.parametrize("items", [3, 3_000])
def test_upload_price_look_up_is_one_query_over_the_named_policies(engine: Engine, items: int) -> None:
    """Item 7: the usage upload's price look-up (`ServiceProvider.prices`) issues one SELECT of the policies the
    batch names, by the indexed policy id, and returns only those rows, whatever the catalog's size."""
    from offchain.core.messages import policy_id

    _fill_catalog(engine, items)
    provider = _provider(engine)
    named = [policy_id((2).to_bytes(32, "big"), 1), policy_id((3).to_bytes(32, "big"), 1), b"\xee" * 32]
    statements: list[tuple[str, object]] = []

    def before(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    try:
        prices = provider.prices(named)
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert prices == {named[0]: 2, named[1]: 3}  # the unknown policy is absent
    catalog_reads = [(s, p) for s, p in statements if "sp_catalog" in s.lower()]
    assert len(catalog_reads) == 1, catalog_reads
    sql, parameters = catalog_reads[0]
    assert "policy_id IN" in sql and "container" not in sql.lower()
    flat = list(parameters.values()) if isinstance(parameters, dict) else list(parameters)
    assert len(flat) == 3  # bounded by the batch's policies, not by the catalog


def test_catalog_policy_id_is_the_messages_policy_id(engine: Engine) -> None:
    from offchain.core.messages import policy_id

    with session_scope(engine) as session:
        sp.add_catalog_item(session, content_id=CONTENT_ID_7, version=4, container=b"c", sealed_key=b"k",
                            policy_json={"price": 9, "title": "t"}, policy_hash=bytes(32), now=1)
    with session_scope(engine) as session:
        assert sp.catalog_item(session, CONTENT_ID_7, 4).policy_id == policy_id(CONTENT_ID_7, 4)
        assert sp.catalog_prices(session, [policy_id(CONTENT_ID_7, 4)]) == {policy_id(CONTENT_ID_7, 4): 9}


CONTENT_ID_7 = b"\x07" * 32
