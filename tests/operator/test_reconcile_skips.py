"""The reconciler's account of skipped ranges (issue 9, item 5): a serial's settled and skipped ranges tile its
seqs, a release matches a skip, held fees equal heldFees(). Pure: ChainFacts built by hand (the services test
tests/services/test_device_skips_withheld_range.py reads them from a real chain).

Each planted fault below is what a reconciler that ignored RangeSkipped or SkippedRangeReleased would conclude
of an honest chain; the honest facts reconcile first (positive control).
"""

from __future__ import annotations

from dataclasses import replace

from offchain.operator.reconcile import ChainFacts, SeqRange, compare_held_fees, compare_sequences, reconcile

SERIAL = "0x" + "11" * 32
HOLD = "0x" + "aa" * 20  # the withholding SP
HONEST = "0x" + "bb" * 20
PRICE = 250


def _facts(ranges: tuple[SeqRange, ...], *, view: tuple[int, int], held: dict[str, int]) -> ChainFacts:
    return ChainFacts(deposits={}, allocated={}, funds_view={}, settled_batches={}, settled_by_policy={},
                      policy_view={}, accruals={}, request_shares={}, requests={}, confirmations={},
                      seq_ranges={SERIAL: ranges}, issue_log_view={SERIAL: view}, held_view=held)


SKIPPED = SeqRange(0, 2, 2 * PRICE, "skipped", HOLD)
LATER = SeqRange(2, 1, PRICE, "settled", HONEST)
RELEASED = SeqRange(0, 2, 2 * PRICE, "released", HOLD)
HELD = _facts((SKIPPED, LATER), view=(3 * PRICE, 3), held={HOLD: 2 * PRICE})
AFTER_RELEASE = _facts((RELEASED, SKIPPED, LATER), view=(3 * PRICE, 3), held={HOLD: 0})


def test_skipped_range_is_neither_missing_nor_double_and_its_held_fees_are_reported() -> None:
    report = reconcile(HELD, now=0)
    assert report.clean, report.unexplained
    assert [(d.area, d.key, d.chain) for d in report.in_flight] == [("held_fees", HOLD, 2 * PRICE)]
    assert (report.totals["skipped"], report.totals["released"], report.totals["held_fees"]) == (500, 0, 500)


def test_released_range_is_not_a_double_payment_and_nothing_stays_held() -> None:
    report = reconcile(AFTER_RELEASE, now=0)
    assert report.clean, report.unexplained
    assert report.in_flight == ()
    assert (report.totals["skipped"], report.totals["released"], report.totals["held_fees"]) == (500, 500, 0)


def test_ignoring_range_skipped_leaves_a_missing_settlement() -> None:
    blind = replace(HELD, seq_ranges={SERIAL: (LATER,)}, held_view={})
    causes = [d.cause for d in compare_sequences(blind)]
    assert any("seqs 0..1 were neither settled nor skipped (missing settlement)" in c for c in causes)
    assert any("issueLog() says spent/nextSeq (750, 3)" in c for c in causes)


def test_ignoring_released_ranges_counts_a_double_payment() -> None:
    blind = replace(AFTER_RELEASE, seq_ranges={SERIAL: (replace(RELEASED, kind="settled"), SKIPPED, LATER)})
    causes = [d.cause for d in compare_sequences(blind)]
    assert any("moved past twice (double payment)" in c for c in causes)


def test_release_without_a_matching_skip_is_unexplained() -> None:
    other = replace(AFTER_RELEASE, seq_ranges={SERIAL: (replace(RELEASED, total=PRICE), SKIPPED, LATER)})
    assert [d.cause for d in compare_sequences(other)] == [
        f"serial {SERIAL}: a release at seq 0 matches no skipped range"]


def test_held_fees_that_disagree_with_the_contract_are_unexplained() -> None:
    wrong = replace(HELD, held_view={HOLD: PRICE})
    (diff,) = compare_held_fees(wrong)
    assert (diff.in_flight, diff.key, diff.chain) == (False, HOLD, PRICE)
    assert "sum to 500, heldFees() says 250" in diff.cause


def test_released_batch_needs_no_cc_receive_log_but_a_settled_one_does() -> None:
    from offchain.operator.reconcile import CcFacts, compare_settlement

    cc = CcFacts(deposits={}, allocated={}, receive_logs={(SERIAL, 2): (PRICE, "settled")}, requests={})
    released = replace(AFTER_RELEASE, settled_batches={(SERIAL, 0): 2 * PRICE, (SERIAL, 2): PRICE})
    assert compare_settlement(released, cc) == []  # the device's copy settled it: the CC never held it
    settled = replace(released, seq_ranges={SERIAL: (replace(RELEASED, kind="settled"), LATER)})
    assert [d.cause for d in compare_settlement(settled, cc)] == [
        f"batch {SERIAL}#0 settled on chain but the CC has no receive log"]
