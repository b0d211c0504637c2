"""Stage summaries explain the figures that look like mistakes."""

from __future__ import annotations

import os

from evaluate_fixtures import write_market

from cion_dist.correlate.job import summary_notes
from cion_dist.evaluate.datasets import read_market


def test_market_reader_counts_the_junk_it_leaves_out(tmp_path):
    root = write_market(tmp_path / "market", train_ids=range(1, 3), test_ids=range(3, 5))
    junk = sum(
        name.startswith("-1_")
        for d in ("bounding_box_train", "bounding_box_test", "query")
        for name in os.listdir(root / d)
    )
    ds = read_market(str(root))
    assert junk > 0 and ds.junk == junk
    assert all(im.pid != -1 for s in ("train", "query", "gallery") for im in ds.split(s))


def _summary(identities_l2: int, tracklets: int, capped: bool) -> dict:
    return {
        "radius": 0.3,
        "link_distance": 0.3,
        "calibrated": ["radius", "link_distance"],
        "radius_stats": {"quantile": 0.41, "capped_at_link_distance": capped},
        "counts": {"tracklets_in": tracklets, "level2": {"identities_out": identities_l2}},
    }


def test_correlate_notes_explain_split_tracklets_and_r_capped_at_d():
    notes = summary_notes(_summary(121, 81, True))
    assert len(notes) == 2
    assert "121 identities from 81 tracklets" in notes[0] and "split" in notes[0]
    assert "r was capped at d = 0.3000" in notes[1] and "0.4100" in notes[1]
    assert summary_notes(_summary(60, 81, False)) == []
