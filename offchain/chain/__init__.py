"""Chain access: the client (`ClearhouseChain`), compile and deploy, the anvil dev node, the ABI codec, read models.

Import from here (`from offchain.chain import ClearhouseChain, Deployment, deploy, start_anvil`); the role code
types its chain as `ChainReader` / `ChainWriter` (offchain.chain.protocols) so a test double is a legitimate
implementation. Clique networks and finality live in `offchain.chain.network` and `offchain.chain.finality`.
"""

from offchain.chain.client import ZERO_BYTES32, ClearhouseChain
from offchain.chain.codec import (
    SettlementItem,
    decode_revert,
    encode_balance_statement,
    encode_settlement_item,
    encode_usage_batch,
    revert_data,
)
from offchain.chain.deploy import (
    ARTIFACTS_PATH,
    EIP170_LIMIT_BYTES,
    RECEIPT_POLL_S,
    CompilerSettings,
    Deployment,
    compile_contracts,
    deploy,
    deploy_artifact,
)
from offchain.chain.devnode import ANVIL_FALLBACK, AnvilProcess, anvil_binary, anvil_storage_args, free_port, start_anvil
from offchain.chain.protocols import ChainReader, ChainWriter
from offchain.chain.views import IssueLogInfo, MemberInfo, PolicyInfo, TransferRequestInfo, UserFunds

__all__ = [
    "ClearhouseChain", "ZERO_BYTES32", "ChainReader", "ChainWriter",
    "ARTIFACTS_PATH", "EIP170_LIMIT_BYTES", "RECEIPT_POLL_S", "CompilerSettings", "compile_contracts", "Deployment",
    "deploy", "deploy_artifact",
    "ANVIL_FALLBACK", "AnvilProcess", "anvil_binary", "anvil_storage_args", "free_port", "start_anvil",
    "SettlementItem", "decode_revert", "revert_data", "encode_usage_batch", "encode_settlement_item",
    "encode_balance_statement",
    "MemberInfo", "IssueLogInfo", "PolicyInfo", "UserFunds", "TransferRequestInfo",
]
