"""`clearhouse bench verify`: usage-log signature verifications per second, fast path vs eth-account's path.

Signs N UsageLogs with one device key, then times `messages.verify` (coincurve, precomputed hashes) on all of
them and `messages.recover_generic` (eth-account encode_typed_data) on a smaller sample, pinned to one core.
Signing and message construction are not timed; only verification (hash + recover + compare) is.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from offchain.core.errors import SignerMismatch
from offchain.core.messages import (
    Domain,
    UsageLog,
    address_from_public_key,
    keccak,
    policy_id,
    recover_generic,
    sign,
    verify,
    verify_usage_logs,
)

BENCH_DOMAIN = Domain(chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
BENCH_RECEIVER = "0x5878D3C46f19D3222C1Aa5083127E026501b07C3"


def signed_usage_logs(n: int, private_key: bytes, domain: Domain) -> tuple[list[UsageLog], list[bytes]]:
    """N consecutive usage logs of one serial over 16 policies, and the device's signature on each."""
    serial = keccak(b"bench-serial")
    policies = [policy_id(keccak(b"content-%d" % i), 1) for i in range(16)]
    logs = [UsageLog(serial=serial, seq=seq, policy_id=policies[seq % 16], fee=100 + seq % 16,
                     receiver=BENCH_RECEIVER, used_at=1_750_000_000 + seq) for seq in range(n)]
    return logs, [sign(log, domain, private_key) for log in logs]


@contextmanager
def one_core() -> Iterator[None]:
    """Pin this process to a single CPU while timing (where the OS supports affinity)."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(previous)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def rate_per_s(check: Callable[[UsageLog, bytes], None], logs: Sequence[UsageLog], sigs: Sequence[bytes]) -> float:
    """Verifications per second of `check` over every (log, signature) pair."""
    start = time.perf_counter()
    for log, signature in zip(logs, sigs):
        check(log, signature)
    return len(logs) / (time.perf_counter() - start)


def _generic_check(domain: Domain, device: str) -> Callable[[UsageLog, bytes], None]:
    def check(log: UsageLog, signature: bytes) -> None:
        got = recover_generic(log, domain, signature)
        if got != device:
            raise SignerMismatch(f"generic path recovered {got}, expected {device}", expected=device, got=got)

    return check


def run(out_path: str = "bench/results/verify.json", n: int = 20000, generic_n: int = 3000) -> dict[str, float | int]:
    """Time both paths, print the rates and their ratio, write them to `out_path` and return them."""
    import coincurve

    private_key = keccak(b"clearhouse-bench-device")
    device = address_from_public_key(coincurve.PrivateKey(private_key).public_key.format(compressed=False))
    logs, sigs = signed_usage_logs(n, private_key, BENCH_DOMAIN)
    sample = min(generic_n, n)
    with one_core():
        fast = rate_per_s(lambda log, sig: verify(log, BENCH_DOMAIN, sig, device), logs, sigs)
        start = time.perf_counter()
        verify_usage_logs(logs, sigs, BENCH_DOMAIN, device)
        batch = n / (time.perf_counter() - start)
        generic = rate_per_s(_generic_check(BENCH_DOMAIN, device), logs[:sample], sigs[:sample])
    result = {"fast_per_s": round(fast, 1), "generic_per_s": round(generic, 1), "ratio": round(fast / generic, 2),
              "batch_per_s": round(batch, 1), "n_fast": n, "n_generic": sample}
    print(f"fast path    : {fast:10,.0f} UsageLog verifications/s (n={n})")
    print(f"batch helper : {batch:10,.0f} UsageLog verifications/s (verify_usage_logs)")
    print(f"eth-account  : {generic:10,.0f} UsageLog verifications/s (n={sample})")
    print(f"ratio        : {fast / generic:10.2f}x")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    run()
