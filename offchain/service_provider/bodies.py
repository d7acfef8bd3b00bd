"""The service provider's HTTP contract: request and response bodies (pydantic, validated at the edge) and the
decoders of their hex and base64 fields, which answer a bad field with InvalidRequest (HTTP 422).

Shared by the routes (api.py) and the ServiceProvider (agent.py), which answers with some of these models.
"""

from __future__ import annotations

import base64
from typing import Any

from pydantic import BaseModel, Field

from offchain.core.errors import InvalidRequest, MalformedMessage
from offchain.core.types import from_hex


class PublishBody(BaseModel):
    container_b64: str
    content_key_b64: str


class PublishResponse(BaseModel):
    content_id: str
    version: int


class CatalogItemOut(BaseModel):
    content_id: str
    version: int
    title: str
    price: int
    policy_id: str


class CatalogResponse(BaseModel):
    items: list[CatalogItemOut]


class DownloadBody(BaseModel):
    content_id: str = Field(pattern=r"^0x[0-9a-fA-F]{64}$")
    version: int = Field(ge=1, lt=2**32)
    agreement: dict[str, Any] | None = Field(
        None, description="The CA's attestation of the device's agreement key (offchain.trust.agreement); "
                          "required: content keys are wrapped only to an attested key of the TLS peer's certificate.")


class DownloadResponse(BaseModel):
    container_b64: str
    wrapped_key: dict[str, Any]


class SignedLog(BaseModel):
    log: dict[str, Any]
    signature: str


class UsageUploadBody(BaseModel):
    batch: dict[str, Any]
    batch_signature: str
    logs: list[SignedLog]
    certificate: str


class UsageAck(BaseModel):
    receive_log_id: str
    acked_through_seq: int
    receive_log: dict[str, Any] | None = None  # the SP-signed ReceiveLog Envelope: the device keeps it as its proof


class KeptReceiveLog(BaseModel):
    """One batch the calling device uploaded earlier: its range and the SP's signed ReceiveLog Envelope of it."""

    first_seq: int
    count: int
    receive_log_id: str
    receive_log: dict[str, Any]


class UsageAcksResponse(BaseModel):
    """`GET /v1/usage/acks`: the SP's receive logs of the caller's own batches of one serial, by first seq."""

    acks: list[KeptReceiveLog]


def request_hex(value: str, name: str) -> bytes:
    """Bytes of a 0x-hex request field; InvalidRequest (not MalformedMessage) when it is not hex."""
    try:
        return from_hex(value, name)
    except MalformedMessage:
        raise InvalidRequest(f"{name} is not hex", model=name, errors="not hex") from None


def request_b64(value: str, name: str) -> bytes:
    """Bytes of a base64 request field; InvalidRequest when it is not base64."""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise InvalidRequest(f"{name} is not base64", model=name, errors="not base64") from None


__all__ = ["PublishBody", "PublishResponse", "CatalogItemOut", "CatalogResponse", "DownloadBody", "DownloadResponse",
           "SignedLog", "UsageUploadBody", "UsageAck", "KeptReceiveLog", "UsageAcksResponse", "request_hex", "request_b64"]
