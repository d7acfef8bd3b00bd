"""The chain package's public surface: the re-exports callers import and the role-facing Protocols."""

from __future__ import annotations

import inspect

import offchain.chain as chain
from offchain.chain import ChainReader, ChainWriter, ClearhouseChain
from offchain.chain import client as client_module


def test_package_reexports_the_public_names() -> None:
    for name in chain.__all__:
        assert getattr(chain, name) is not None, name
    assert chain.deploy.__module__ == "offchain.chain.deploy"
    assert chain.start_anvil.__module__ == "offchain.chain.devnode"
    assert chain.decode_revert.__module__ == "offchain.chain.codec"
    assert chain.MemberInfo.__module__ == "offchain.chain.views"


def _protocol_methods(protocol: type) -> set[str]:
    return {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}


def test_clearhouse_chain_implements_reader_and_writer_protocols() -> None:
    for protocol in (ChainReader, ChainWriter):
        for name in _protocol_methods(protocol):
            implemented = getattr(ClearhouseChain, name, None)
            assert callable(implemented), f"ClearhouseChain lacks {protocol.__name__}.{name}"
            assert _required(getattr(protocol, name)) == _required(implemented), name


def _required(function: object) -> list[str]:
    """The parameters a caller must pass (optional keywords may differ while a signature is being extended)."""
    return [p.name for p in inspect.signature(function).parameters.values()  # type: ignore[arg-type]
            if p.name != "self" and p.default is inspect.Parameter.empty]


def test_writer_extends_reader() -> None:
    assert _protocol_methods(ChainReader) <= _protocol_methods(ChainWriter) | set(dir(ChainReader))
    assert ChainReader in ChainWriter.__mro__


def test_client_module_exports_only_the_client() -> None:
    """Callers import deploy/devnode/codec/views names from `offchain.chain`, not through the client module."""
    assert set(client_module.__all__) == {"ClearhouseChain", "ZERO_BYTES32", "node_refusal"}
    for name in ("deploy", "start_anvil", "AnvilProcess", "compile_contracts", "_anvil_binary", "_free_port"):
        assert not hasattr(client_module, name), name
