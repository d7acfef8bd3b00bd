"""`clearhouse bench hsm`: what keeping signing keys in a PKCS#11 token costs, on SoftHSM2.

Times N secp256k1 digest signatures through the token (CKM_ECDSA, low-s, recovery id by trial) against the same
with a key in memory (coincurve), N EIP-1559 transaction signatures through the token, and P-384 CA signatures
(member certificates). SoftHSM2 is software: a network HSM adds its round trip per signature, measure yours.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from offchain.core.messages import keccak

PIN = "bench-pin"
TOKEN = "clearhouse-bench"


def _ms_per_op(n: int, op: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        op(i)
    return (time.perf_counter() - start) * 1000 / n


def run(out_path: str = "bench/results/hsm.json", n: int = 500) -> dict[str, float | int]:
    """Measure, print and write the figures; a fresh SoftHSM2 token in a temporary directory."""
    from offchain.trust import keys

    with tempfile.TemporaryDirectory(prefix="clearhouse-hsm-bench-") as tmp:
        os.environ["SOFTHSM2_CONF"] = str(keys.init_softhsm(Path(tmp), [TOKEN], PIN))
        config = keys.Pkcs11Config(keys.softhsm_module(), TOKEN, PIN)
        token_signer = keys.generate_secp256k1(config, "bench-secp256k1")
        file_signer = keys.FileSigner(keccak(b"clearhouse-bench-file-key"))
        ca_key = keys.generate_ec_key(config, "bench-p384", ec.SECP384R1())
        digests = [keccak(i.to_bytes(8, "big")) for i in range(n)]
        tx = {"to": "0x" + "11" * 20, "value": 1, "gas": 21_000, "chainId": 31337, "maxFeePerGas": 10**9,
              "maxPriorityFeePerGas": 1, "data": b""}
        token_ms = _ms_per_op(n, lambda i: token_signer.sign_digest(digests[i]))
        file_ms = _ms_per_op(n, lambda i: file_signer.sign_digest(digests[i]))
        tx_ms = _ms_per_op(n, lambda i: token_signer.sign_transaction({**tx, "nonce": i}))
        ca_ms = _ms_per_op(max(n // 5, 1), lambda i: ca_key.sign(digests[i], ec.ECDSA(hashes.SHA384())))
    result: dict[str, float | int] = {
        "token_sign_digest_ms": round(token_ms, 3), "token_sign_digest_per_s": round(1000 / token_ms, 1),
        "file_sign_digest_ms": round(file_ms, 4), "token_sign_tx_ms": round(tx_ms, 3),
        "token_p384_sign_ms": round(ca_ms, 3), "n": n, "module": "softhsm2",
    }
    print(f"secp256k1 digest, token : {token_ms:8.3f} ms/signature ({1000 / token_ms:,.0f}/s, n={n})")
    print(f"secp256k1 digest, file  : {file_ms:8.4f} ms/signature")
    print(f"EIP-1559 tx, token      : {tx_ms:8.3f} ms/transaction")
    print(f"P-384 (CA root), token  : {ca_ms:8.3f} ms/signature")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result

