"""Regression test for the suite's dependence on machine speed: `evm_revert` rewinds anvil's clock.

The services compare the chain's time with the wall clock (member validity, certificates); a revert of a snapshot
taken long ago must not leave the chain behind it. No sleeping: the snapshot is made old by moving the clock back.
"""

from __future__ import annotations

import time

from eth_utils import keccak

LAG_S = 3_600  # an hour: far more than provision's validFrom margin of 300 s


def test_revert_of_old_snapshot_keeps_members_registered_now_active(chain_env, w3, revert_chain) -> None:
    request = w3.provider.make_request
    request("evm_setTime", [int(time.time()) - LAG_S])
    request("evm_mine", [])
    box = [request("evm_snapshot", [])["result"]]
    request("evm_mine", [])

    revert_chain(w3, box)

    # as provision does: a member valid from five minutes ago, registered after the revert
    authority = chain_env.client("authority")
    newcomer = chain_env.actors["attacker"].address
    valid_from = int(time.time()) - 300
    authority.register_member(newcomer, 2, keccak(text="late"), keccak(text="cert:late"), valid_from, 2**40 - 1)
    block = w3.eth.get_block("latest")
    assert block["timestamp"] >= valid_from + 300, "anvil's clock stayed at the reverted snapshot's time"
    assert authority.is_active(newcomer, 2)
