"""The error hierarchy: declared fields, the payload round trip, and a peer's hostile error bodies.

A client rebuilds a peer's error from an allow-list of codes and each class's declared fields, so no body can
crash it (AttributeError, TypeError) or relabel the error's code or HTTP status. The hostile bodies go through a
real aiohttp server and the real `JsonClient`, over plain HTTP (TLS is not what is tested here).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from offchain.core import errors
from offchain.core.errors import (
    ClearhouseError,
    ConfigError,
    ContractReverted,
    InsufficientFunds,
    MemberSetupError,
    PathError,
    RemoteError,
    SecureModuleError,
    SettingError,
    ToolMissing,
    TransportError,
    from_payload,
)
from offchain.transport.client import JsonClient, error_from_payload

ROOT = Path(__file__).resolve().parents[2]
URL = "https://peer.test/x"

HOSTILE_BODIES: list[tuple[str, Any]] = [
    ("fields named fields", {"error": "insufficient_funds", "message": "m", "fields": {"fields": "x"}}),
    ("fields relabel code", {"error": "insufficient_funds", "message": "m",
                             "fields": {"code": "bank_error", "http_status": 200, "message": "other"}}),
    ("fields named args", {"error": "contract_reverted", "message": "m", "fields": {"args": ["a"], "with_traceback": 1}}),
    ("unknown field", {"error": "wrong_role", "message": "m", "fields": {"__class__": "x", "__dict__": {}, "zz": 1}}),
    ("nested values", {"error": "insufficient_funds", "message": {"a": [1]},
                       "fields": {"available": {"deep": [1, {"x": 2}]}, "user_id": ["u"]}}),
    ("fields not a dict", {"error": "not_found", "message": "m", "fields": ["a", "b"]}),
    ("message not a string", {"error": "not_found", "message": 12, "fields": None}),
    ("code not a string", {"error": {"code": "x"}, "message": "m"}),
    ("unknown code", {"error": "definitely_not_ours", "message": "m", "fields": {"x": 1}}),
    ("root code", {"error": "clearhouse_error", "message": "m"}),
    ("no error key", {"message": "m"}),
    ("a list", [1, 2, 3]),
    ("a string", "boom"),
    ("null", None),
    ("huge message", {"error": "not_found", "message": "x" * 1_000_000}),
]


@pytest.mark.parametrize("name, body", HOSTILE_BODIES, ids=[n for n, _ in HOSTILE_BODIES])
def test_from_payload_hostile_body_gives_clearhouse_error_with_honest_code(name: str, body: Any) -> None:
    error = from_payload(418, body, URL)
    assert isinstance(error, ClearhouseError)
    cls = type(error)
    assert error.code == cls.code and error.http_status == cls.http_status  # the class's, never the peer's
    assert set(error.fields) <= set(cls.field_names()) | {"remote_status"}
    assert error.remote_status == 418 and error.remote_url == URL
    assert len(error.message) <= errors.MAX_REMOTE_TEXT + 200
    error.to_payload()  # still serialisable
    str(error)


def test_from_payload_known_code_keeps_declared_fields_only() -> None:
    body = {"error": "insufficient_funds", "message": "user u1 has 5, wants 7",
            "fields": {"user_id": "u1", "available": 5, "wanted": 7, "code": "x", "fields": "y"}}
    error = from_payload(422, body, URL)
    assert type(error) is InsufficientFunds
    assert (error.user_id, error.available, error.wanted, error.message) == ("u1", 5, 7, "user u1 has 5, wants 7")
    assert error.fields == {"user_id": "u1", "available": 5, "wanted": 7, "remote_status": 422}


def test_from_payload_unknown_code_gives_remote_error_with_what_the_peer_said() -> None:
    error = from_payload(500, {"error": "teapot", "message": "short and stout"}, URL)
    assert type(error) is RemoteError and isinstance(error, TransportError)
    assert (error.remote_code, error.remote_message, error.url, error.status) == ("teapot", "short and stout", URL, 500)


def test_from_payload_nested_values_become_text() -> None:
    error = from_payload(422, {"error": "insufficient_funds", "message": "m", "fields": {"available": [1, 2]}}, URL)
    assert error.available == "[1, 2]"


def test_payload_round_trip_every_class() -> None:
    for code, cls in errors.error_classes().items():
        if cls is ClearhouseError:
            continue
        values = {name: f"v-{name}" for name in cls.field_names()}
        original = cls(f"{code} happened", **values)
        rebuilt = from_payload(cls.http_status, original.to_payload(), URL)
        assert type(rebuilt) is cls, code
        assert (rebuilt.message, rebuilt.code) == (original.message, code)
        assert {k: v for k, v in rebuilt.fields.items() if k != "remote_status"} == values


def _every_class() -> list[type[ClearhouseError]]:
    """ClearhouseError and all its subclasses, including those that share their parent's code."""
    found: list[type[ClearhouseError]] = []
    pending = [ClearhouseError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_error_codes_are_unique() -> None:
    """Every class that sets its own `code` has a code of its own; one that does not (SettingError) shares its
    parent's, so the CLI and HTTP edges answer the same `config_error` as before the split."""
    seen: dict[str, str] = {}
    for cls in _every_class():
        if cls is not ClearhouseError and "code" not in vars(cls):
            continue  # inherits its parent's code on purpose
        assert cls.code not in seen or seen[cls.code] == cls.__name__, (cls.code, seen.get(cls.code), cls.__name__)
        seen[cls.code] = cls.__name__


def test_error_rejects_undeclared_field() -> None:
    with pytest.raises(TypeError):
        InsufficientFunds("m", colour="red")  # type: ignore[call-arg]


def test_error_class_cannot_declare_reserved_field() -> None:
    with pytest.raises(TypeError, match="reserved"):
        class Bad(ClearhouseError):  # noqa: F841 - the definition itself must fail
            code = "bad"

            def __init__(self, message: str, *, code: str | None = None) -> None:
                super().__init__(message)


def test_contract_reverted_keeps_decoded_args_apart_from_exception_args() -> None:
    error = ContractReverted("settle reverted", error_name="CapExceeded", error_args={"cap": 5})
    assert error.error_args == {"cap": 5} and error.args == ("settle reverted",) and str(error) == "settle reverted"


def test_secure_module_error_is_not_a_container_error() -> None:
    assert not issubclass(SecureModuleError, errors.ContainerError)


def test_operator_errors_live_in_the_hierarchy() -> None:
    from offchain.operator import demo, reconcile
    from offchain.operator.audit import index

    assert index.AuditError is errors.AuditError and demo.DemoError is errors.DemoError
    assert reconcile.ReconciliationFailed is errors.ReconciliationFailed


def test_every_raise_site_uses_declared_fields() -> None:
    """Every `SomeError(message, name=...)` call in the package passes only names the class declares."""
    classes = {cls.__name__: cls for cls in _every_class()}  # not error_classes(): SettingError shares a code
    wrong = []
    for path in sorted((ROOT / "offchain").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            cls = classes.get(name or "")
            if cls is None:
                continue
            accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
            for keyword in node.keywords:
                if keyword.arg is not None and keyword.arg not in accepted:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}({keyword.arg}=...)")
    assert not wrong, wrong


# --- ConfigError's subclasses -----------------------------------------------------------------------------------
CONFIG_ERROR_FIELDS: dict[type[ConfigError], set[str]] = {
    SettingError: {"candidates", "confirmations", "env", "expected", "field", "got", "group_by", "length", "missing",
                   "mtls", "output", "source"},
    PathError: {"directory", "env", "field", "path", "settings", "suffix"},
    ToolMissing: {"binary", "candidates", "stage", "tool"},
    MemberSetupError: {"cert_path", "content_id", "env", "field", "member_id", "role", "user_id", "version"},
}


@pytest.mark.parametrize("cls", list(CONFIG_ERROR_FIELDS), ids=lambda cls: cls.__name__)
def test_config_error_subclass_is_a_config_error_with_its_own_fields(cls: type[ConfigError]) -> None:
    assert issubclass(cls, ConfigError) and "code" not in vars(cls) and "http_status" not in vars(cls)
    assert (cls.code, cls.http_status) == ("config_error", 500)
    assert set(cls.field_names()) == CONFIG_ERROR_FIELDS[cls]
    assert ConfigError.field_names() == ()  # the common base carries the message only


def _raised(call: Any, *args: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call(*args)
    return info.value


def test_config_error_raise_sites_put_their_fields_in_the_payload(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One real raise site per subclass: the error has that class, answers config_error and carries its fields."""
    from offchain.core.messages import Role
    from offchain.core.settings import DeviceSettings, load_settings
    from offchain.operator import reconcile
    from offchain.trust import ca, keys

    yaml = tmp_path / "device.yaml"
    yaml.write_text("member_id: d")
    monkeypatch.setattr(keys, "SOFTHSM_MODULES", ("/nonexistent/libsofthsm2.so",))
    cases = [
        (_raised(reconcile.render_csv, None, io.StringIO(), "everything"), SettingError,
         {"field": "section", "got": "everything"}),
        (_raised(load_settings, DeviceSettings, yaml), PathError, {"path": str(yaml), "suffix": ".yaml"}),
        (_raised(keys.softhsm_module), ToolMissing, {"candidates": ["/nonexistent/libsofthsm2.so"]}),
        (_raised(ca._check_user_id, "sp-1", Role.SERVICE_PROVIDER, "alice"), MemberSetupError,
         {"member_id": "sp-1", "role": int(Role.SERVICE_PROVIDER), "user_id": "alice"}),
    ]
    for error, cls, fields in cases:
        assert type(error) is cls, (error, cls)
        assert error.to_payload() == {"error": "config_error", "message": error.message, "fields": fields}


def test_peer_config_error_comes_back_as_config_error() -> None:
    """The subclasses share the code, so a peer's body names only `config_error`: the client rebuilds the base."""
    body = SettingError("bad option", field="payee", got="x").to_payload()
    rebuilt = from_payload(500, body, URL)
    assert type(rebuilt) is ConfigError and (rebuilt.code, rebuilt.message) == ("config_error", "bad option")


# --- through a real server and the real client -------------------------------------------------------------------
async def _answer_all(bodies: list[tuple[str, Any]]) -> list[BaseException]:
    by_name = dict(bodies)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(by_name[request.match_info["name"]], status=409)

    app = web.Application()
    app.router.add_get("/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = JsonClient(f"http://127.0.0.1:{port}", None)  # type: ignore[arg-type]  # plain HTTP: ssl=None
    caught: list[BaseException] = []
    try:
        for name, _ in bodies:
            try:
                await client.get(f"/{name}")
            except BaseException as exc:  # noqa: BLE001 - the test checks what kind it is
                caught.append(exc)
            else:
                caught.append(AssertionError(f"{name}: no error raised"))
    finally:
        await client.close()
        await runner.cleanup()
    return caught


def test_json_client_hostile_error_bodies_give_clearhouse_errors() -> None:
    bodies = [(f"b{i}", body) for i, (_, body) in enumerate(HOSTILE_BODIES)]
    caught = asyncio.run(_answer_all(bodies))
    assert len(caught) == len(bodies)
    for (name, body), exc in zip(HOSTILE_BODIES, caught):
        assert isinstance(exc, ClearhouseError), (name, repr(exc))
        assert exc.code == type(exc).code and exc.remote_status == 409, name
    assert type(caught[0]) is InsufficientFunds  # positive control: a known code keeps its class


def test_transport_error_from_payload_delegates_to_core() -> None:
    body = {"error": "insufficient_funds", "message": "m", "fields": {"fields": "x"}}
    assert type(error_from_payload(422, body, URL)) is InsufficientFunds
