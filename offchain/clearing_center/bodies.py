"""The clearing center's request bodies (pydantic, validated at the HTTP edge): the wire contract of its routes.

Shared by the routes (api.py) and the ClearingCenter (agent.py), which reads them after validation.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

HEX32 = r"^0x[0-9a-fA-F]{64}$"


class DepositNotice(BaseModel):
    deposit_id: str = Field(pattern=HEX32, description="The on-chain depositId (bytes32).")
    user_id: str = Field(min_length=1, max_length=128)
    amount: int = Field(gt=0, lt=2**96)
    bank_ref: str = Field(pattern=HEX32)
    tx_hash: str = Field(pattern=HEX32, description="The bank's recordDeposit transaction.")


class IssueBody(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    amount: int | None = Field(None, gt=0, lt=2**96, description="Default: all unallocated deposits.")


class RenewBody(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    statement: dict[str, Any] = Field(description="Envelope(BalanceStatement) signed by the device.")
    amount: int | None = Field(None, ge=0, lt=2**96, description="New money; default: all unallocated deposits.")


class ReceiveItem(BaseModel):
    receive_log: dict[str, Any]
    usage_batch: dict[str, Any]
    device_signature: str
    device_certificate: str


class ReceiveBody(BaseModel):
    items: list[ReceiveItem] = Field(min_length=1, max_length=1024)


__all__ = ["DepositNotice", "IssueBody", "RenewBody", "ReceiveItem", "ReceiveBody"]
