"""Pure parts of the synthetic corpus: who is where, how people look, how they are drawn and hidden."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cion_dist.errors import DataError
from cion_dist.synth.appearance import PATTERNS, sample_appearances, sample_cameras
from cion_dist.synth.clip import render_clip
from cion_dist.synth.config import SynthConfig
from cion_dist.synth.generate import plan_corpus
from cion_dist.synth.market import market_filename, parse_market_filename
from cion_dist.synth.render import SensorNoise, SpriteBank, draw_person
from cion_dist.synth.scenario import assign_identities, plan_walks, walk_state


def test_default_corpus_spreads_every_identity_over_videos_and_cameras():
    plan = plan_corpus(SynthConfig())
    clips_of = {p.identity_id: [c for c in plan.clips if p.identity_id in c.identities] for p in plan.people}
    for pid, clips in clips_of.items():
        assert len(clips) >= 2, pid
        assert len({c.camera.index for c in clips}) >= 2, pid
    assert all(len(c.identities) == 4 for c in plan.clips)
    # clips of one camera are consecutive in time
    for cam in plan.cameras:
        starts = sorted(c.start_time for c in plan.clips if c.camera.index == cam.index)
        assert np.allclose(np.diff(starts), 120 / 10)


def test_assignment_balances_usage_and_caps_people_per_clip():
    rng = np.random.default_rng(0)
    cast = assign_identities(list(range(1, 8)), [0, 1, 2, 0, 1, 2, 0], per_clip=9, rng=rng)
    assert all(len(c) == 7 for c in cast)
    cast = assign_identities(list(range(1, 8)), [0, 1] * 5, per_clip=3, rng=rng)
    counts = np.bincount([i for c in cast for i in c])[1:]
    assert counts.max() - counts.min() <= 1 and counts.sum() == 30


def test_walks_enter_and_leave_through_borders_with_perspective():
    cam = sample_cameras(1, np.random.default_rng(3))[0]
    walks = plan_walks([1, 2, 3, 4], cam, 320, 192, 60, 10, np.random.default_rng(1))
    assert {w.end_x > w.start_x for w in walks} == {True, False}
    for w in walks:
        first = walk_state(w, int(np.ceil(w.entry)), cam, 320, 192)
        if first is not None:  # just entered: the box still touches the entry border
            assert first.x1 < 0 if w.end_x > w.start_x else first.x1 + first.w > 320
        assert walk_state(w, int(np.floor(w.entry)) - 1, cam, 320, 192) is None
        assert walk_state(w, int(np.ceil(w.entry + w.duration)) + 1, cam, 320, 192) is None
    states = [s for w in walks for f in range(60) if (s := walk_state(w, f, cam, 320, 192)) is not None]
    feet = np.array([s.foot_y for s in states])
    heights = np.array([s.h for s in states])
    assert np.corrcoef(feet, heights)[0, 1] > 0.99  # lower feet, bigger person
    assert all(s.w == s.h // 2 for s in states)
    entries = sorted(w.entry for w in walks)
    assert np.min(np.diff(entries)) > 0  # staggered


def test_appearances_are_distinct_except_deliberate_look_alikes():
    people = sample_appearances(40, np.random.default_rng(5))
    assert {p.pattern for p in people} == set(PATTERNS)
    alikes = [p for p in people if p.similar_to]
    assert 4 <= len(alikes) <= 20
    by_id = {p.identity_id: p for p in people}
    for p in alikes:
        base = by_id[p.similar_to]
        assert p.pattern != base.pattern
        assert np.abs(np.asarray(p.upper) - np.asarray(base.upper)).max() <= 14.0 + 1e-9
    indep = [p for p in people if not p.similar_to][:10]
    gaps = [
        np.linalg.norm(np.r_[a.upper_mean(), a.lower] - np.r_[b.upper_mean(), b.lower])
        for a, b in itertools.combinations(indep, 2)
    ]
    assert min(gaps) > 40


def test_sprite_shape_pattern_halves_and_soft_edges():
    people = sample_appearances(8, np.random.default_rng(2), hard_negative_fraction=0.0)
    for app in people:
        spr = draw_person(app, 0)
        assert spr.shape == (192, 96, 4) and spr.dtype == np.float32
        a = spr[..., 3]
        assert 0.0 < ((a > 0.02) & (a < 0.98)).mean() < 0.1  # anti-aliased edges exist but are thin
        torso = spr[int(0.24 * 192) : int(0.46 * 192), int(0.36 * 96) : int(0.64 * 96)]
        assert np.allclose(torso[..., 3], 1.0)
        mean = torso[..., :3].reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - app.upper_mean()).max() < 0.12 * np.abs(np.subtract(app.upper, app.upper2)).max() + 2


def test_crossing_people_hide_each_other_in_depth_order():
    plan = plan_corpus(
        SynthConfig(identities=6, cameras=1, videos=1, frames=80, width=320, height=192, people_per_video=6)
    )
    clip = plan.clips[0]
    bg = np.full((192, 320, 3), 128, np.uint8)
    rows = [
        r
        for _, rs in render_clip(
            clip.walks, SpriteBank(plan.people), clip.camera, bg, 80, SensorNoise(np.random.default_rng(0), 320, 192)
        )
        for r in rs
    ]
    occluded = [r for r in rows if 0 < r.visibility < 0.95 and 0 < r.x1 and r.x2 < 320]
    assert occluded, "six people crossing in 80 frames should hide one another at least once"
    by_frame = {}
    for r in rows:
        by_frame.setdefault(r.frame_index, []).append(r)
    for r in occluded:
        # something in front (lower feet) overlaps the hidden person's box
        assert any(o.y2 > r.y2 and o.x1 < r.x2 and o.x2 > r.x1 for o in by_frame[r.frame_index] if o is not r)


def test_market_names_round_trip_and_reject_garbage():
    assert market_filename(7, 2, 1234, 3) == "0007_c2s1_001234_03.jpg"
    assert parse_market_filename("x/0007_c2s1_001234_03.jpg") == (7, 2, 1, 1234, 3)
    assert parse_market_filename(market_filename(-1, 1, 5, 1)) == (-1, 1, 1, 5, 1)
    with pytest.raises(DataError, match="abc.jpg"):
        parse_market_filename("abc.jpg")


def test_texture_look_alikes_share_every_rows_colours_but_not_the_texture():
    from dataclasses import replace

    from cion_dist.synth.appearance import ROW_BALANCED

    people = sample_appearances(
        40, np.random.default_rng(3), hard_negative_fraction=0.5, texture_look_alikes=True, details=True
    )
    by_id = {p.identity_id: p for p in people}
    pairs = [(p, by_id[p.similar_to]) for p in people if p.similar_to and by_id[p.similar_to].pattern in ROW_BALANCED]
    assert len(pairs) >= 8
    checked = 0
    for a, b in pairs:
        assert a.pattern in ROW_BALANCED and a.pattern != b.pattern
        # same body details, so only the torso texture differs
        a0, b0 = (
            replace(x, badge="none", bag="none", hair_style="short", skin=a.skin, hair=a.hair, shoes=a.shoes)
            for x in (a, b)
        )
        sa, sb = draw_person(a0, 0), draw_person(b0, 0)
        torso = (slice(int(0.24 * 192), int(0.46 * 192)), slice(int(0.36 * 96), int(0.64 * 96)))
        ta, tb = sa[torso][..., :3], sb[torso][..., :3]
        rows_a, rows_b = ta.mean(axis=1), tb.mean(axis=1)  # per-row colour content
        contrast = np.abs(np.subtract(a.upper, a.upper2)).max()
        if contrast < 40:
            continue
        assert np.abs(rows_a.mean(0) - rows_b.mean(0)).max() < 0.25 * contrast + 10
        assert np.abs(ta - tb).mean() > 0.1 * contrast  # pixel by pixel the textures differ
        checked += 1
    assert checked >= 4


def test_details_and_benchmark_style_change_pixels():
    from dataclasses import replace

    from cion_dist.synth.appearance import sample_cameras
    from cion_dist.synth.market import BenchmarkStyle, _person_frame
    from cion_dist.synth.render import SpriteBank

    app = sample_appearances(1, np.random.default_rng(1), details=True)[0]
    plain = replace(app, badge="none", bag="none", hair_style="short")
    for change in ({"badge": "square"}, {"bag": "backpack"}, {"hair_style": "long"}):
        assert np.abs(draw_person(replace(plain, **change), 0) - draw_person(plain, 0)).max() > 20, change
    people = sample_appearances(3, np.random.default_rng(2))
    cam = sample_cameras(1, np.random.default_rng(0))[0]
    bg = np.full((192, 320, 3), 120, np.uint8)
    bank = SpriteBank(people)
    noise = SensorNoise(np.random.default_rng(0), 320, 192, amplitude=1)
    base, box = _person_frame(bank, 1, cam, bg, np.random.default_rng(5), noise)
    hard, box2 = _person_frame(
        bank,
        1,
        cam,
        bg,
        np.random.default_rng(5),
        noise,
        BenchmarkStyle(light_jitter=0.3, far=0.5, occlusion=1.0),
        others=(2, 3),
    )
    assert box != box2 or np.abs(hard.astype(int) - base.astype(int)).max() > 30
