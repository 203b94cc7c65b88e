"""Which file a reader takes each step from, and what a compaction merges next (hand-made file sets)."""

from __future__ import annotations

import pytest

from rlcadence.storage.compaction import FANOUT, next_group
from rlcadence.storage.layout import LayoutError, Piece, resolve, steps_of


def step(t: int, size: int = 10) -> Piece:
    return Piece(f"rollouts/run_id=r/step={t}/part-0.parquet", t, t, size, "step")


def comp(a: int, b: int, kind: str = "compacted", size: int = 100) -> Piece:
    name = f"compacted-{a:08d}-{b:08d}.parquet"
    return Piece(f"rollouts/run_id=r/{'.' + name + '.pending' if kind == 'pending' else name}", a, b, size, kind)


def test_step_files_alone_are_read_as_they_are():
    assert resolve([step(1), step(0), step(2)]) == [step(0), step(1), step(2)]


def test_a_pending_merge_replaces_what_it_covers_while_its_sources_are_deleted():
    # killed half-way through deleting the sources of 0..5: some step files and one compacted file remain
    pieces = [comp(0, 5, "pending"), comp(0, 2), step(4), step(5), step(6)]
    live = resolve(pieces)
    assert live == [comp(0, 5, "pending"), step(6)]
    assert steps_of(live) == [0, 1, 2, 3, 4, 5, 6]


def test_a_published_merge_wins_over_its_leftover_pending_copy():
    live = resolve([comp(0, 9, "pending"), comp(0, 9), step(10)])
    assert live == [comp(0, 9), step(10)]


def test_overlap_without_cover_is_refused():
    with pytest.raises(LayoutError, match="overlaps"):
        resolve([comp(0, 5), comp(3, 8)])


def test_in_run_compaction_merges_the_committed_step_files_then_full_levels():
    live = [comp(0, 9), step(10), step(11), step(12)]
    assert next_group(live, upto=11, full=False, target_bytes=10**9) == [step(10), step(11)]  # 12: not committed
    tens = [comp(10 * i, 10 * i + 9) for i in range(FANOUT)]
    assert next_group(tens + [step(100)], upto=99, full=False, target_bytes=10**9) == tens
    assert next_group(tens[1:] + [comp(100, 109)], upto=109, full=False, target_bytes=10**9) is None  # 10..109: unaligned
    assert next_group(tens, upto=99, full=False, target_bytes=999) is None  # 1000 bytes > target


def test_full_compaction_merges_greedily_under_the_target():
    live = [comp(0, 9, size=600), comp(10, 19, size=300), step(20, 50), step(21, 50), step(22, 50)]
    assert next_group(live, upto=22, full=True, target_bytes=1000) == live[:4]  # 600 + 300 + 50 + 50 = 1000
    assert next_group([comp(0, 9, size=950), step(10, 100)], upto=10, full=True, target_bytes=1000) is None
