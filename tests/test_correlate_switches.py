"""Switch splitting at level 1 on synthetic tracklets whose ground truth knows where the tracker switched people."""

from __future__ import annotations

import numpy as np

from cion_dist.correlate.denoise import denoise_video
from cion_dist.correlate.quality import as_singletons, pairwise_prf
from cion_dist.correlate.switches import SwitchSplit, best_cut, switch_segments
from cion_dist.vectors import l2_normalise

R, D = 0.3, 0.2


def switch_video(
    seed: int,
    people: int = 12,
    length: int = 24,
    switches: int = 4,
    dim: int = 64,
    pair_distance: float = 0.3,
    spread: float = 0.35,
):
    """One video of ``people`` tracklets in frame order; the first ``switches`` tracklets switch half-way (at a
    random frame) to a look-alike whose prototype is ``pair_distance`` (cosine) from the first person's, close
    enough that both halves lie within ``R`` of their joint centroid. Returns (x, tracklet, frame, identity)."""
    rng = np.random.default_rng(seed)
    proto = l2_normalise(rng.normal(size=(people, dim)))
    # look-alikes: person people+i sits pair_distance from person i
    a = np.sqrt(1 - (1 - pair_distance) ** 2)
    side = rng.normal(size=(switches, dim))  # a direction orthogonal to each switched person's prototype
    side = l2_normalise(side - np.sum(side * proto[:switches], axis=1, keepdims=True) * proto[:switches])
    twins = l2_normalise((1 - pair_distance) * proto[:switches] + a * side)
    proto = np.vstack([proto, twins])
    xs, trk, frm, ids = [], [], [], []
    for t in range(people):
        cut = int(rng.integers(length // 4, 3 * length // 4)) if t < switches else length
        who = np.where(np.arange(length) < cut, t, people + t)
        f = l2_normalise(proto[who] + spread * rng.normal(size=(length, dim)) / np.sqrt(dim))
        xs.append(f)
        trk += [t] * length
        frm += list(range(t, t + length))
        ids += who.tolist()
    order = rng.permutation(people * length)  # rows in no particular order: time comes from the frame column
    return (
        np.concatenate(xs).astype(np.float32)[order],
        np.array(trk)[order],
        np.array(frm)[order],
        np.array(ids)[order],
    )


def mixed_groups(group: np.ndarray, identity: np.ndarray, min_minority: int = 2) -> int:
    """Groups holding at least ``min_minority`` images of a second person."""
    n = 0
    for g in np.unique(group[group >= 0]):
        _, counts = np.unique(identity[group == g], return_counts=True)
        n += int(len(counts) > 1 and np.sort(counts)[-2] >= min_minority)
    return n


def test_best_cut_finds_a_planted_change_point():
    rng = np.random.default_rng(0)
    a, b = l2_normalise(rng.normal(size=(2, 32)))
    x = l2_normalise(np.vstack([a + 0.1 * rng.normal(size=(7, 32)), b + 0.1 * rng.normal(size=(13, 32))]))
    k, dist = best_cut(x, 3)
    assert k == 7 and dist > 0.5
    assert best_cut(x[:5], 3) == (-1, 0.0)
    seg, cuts = switch_segments(x, 0.2, 3)
    assert seg.tolist() == [0] * 7 + [1] * 13 and [c for c, _ in cuts] == [7]
    # three people in a row: recursion finds both cuts; the minimum segment guards the ends
    c = l2_normalise(rng.normal(size=32))
    y = np.vstack([x, l2_normalise(c + 0.1 * rng.normal(size=(6, 32)))])
    seg, cuts = switch_segments(y, 0.2, 3)
    assert [k for k, _ in cuts] == [7, 20] and seg.max() == 2
    assert switch_segments(x, 2.5, 3)[0].max() == 0  # threshold above any distance: no cut


def test_switch_splitting_unmixes_tracklets_without_cutting_clean_ones():
    """Figures over 10 synthetic videos (12 tracklets each, 4 with a switch to a look-alike)."""
    rows = {}
    for name, split in (("off", SwitchSplit(enabled=False)), ("on", SwitchSplit())):
        mixed = clean_cut = clean = switched_cut = switched = 0
        true_all, pred_all = [], []
        for seed in range(10):
            x, trk, frm, ident = switch_video(seed)
            # the planted difficulty: each switched tracklet passes level 1's radius check as one piece
            res = denoise_video(x, trk, R, D, 2, frm, split=split)
            mixed += mixed_groups(res.group, ident)
            cut_tracklets = {int(t) for t, _, _ in res.cuts}
            for t in np.unique(trk):
                is_switched = len(np.unique(ident[trk == t])) > 1
                switched += is_switched
                clean += not is_switched
                switched_cut += is_switched and t in cut_tracklets
                clean_cut += (not is_switched) and t in cut_tracklets
            true_all.append(ident + 1000 * seed)
            pred_all.append(np.where(res.group >= 0, res.group + 1000 * seed, -1))
        p, r, f = pairwise_prf(np.concatenate(true_all), as_singletons(np.concatenate(pred_all)))
        rows[name] = dict(mixed=mixed, f=f, p=p, r=r, false_split=clean_cut / clean, found=switched_cut / switched)
        print(
            f"switch split {name}: mixed groups {mixed} of {switched} switched tracklets, pairwise P/R/F "
            f"{p:.3f}/{r:.3f}/{f:.3f}, switched tracklets cut {switched_cut}/{switched}, "
            f"clean tracklets cut {clean_cut}/{clean} (false-split rate {clean_cut / clean:.3f})"
        )
    assert rows["off"]["mixed"] >= 30  # without splitting nearly every switch survives levels 1-2
    assert rows["on"]["mixed"] <= rows["off"]["mixed"] // 5
    assert rows["on"]["f"] > rows["off"]["f"] + 0.05
    assert rows["on"]["found"] >= 0.9
    assert rows["on"]["false_split"] <= 0.02
    assert rows["off"]["false_split"] == 0.0


def test_cuts_name_the_tracklet_and_frame():
    x, trk, frm, ident = switch_video(3, people=3, switches=1)
    res = denoise_video(x, trk, R, D, 2, frm)
    assert len(res.cuts) == 1
    t, f, dist = res.cuts[0]
    rows = trk == t
    true_switch = frm[rows][ident[rows] != ident[rows][np.argmin(frm[rows])]].min()
    assert t == 0 and abs(int(f) - int(true_switch)) <= 1 and dist >= D
    # no frame column -> no time order -> no splitting
    assert denoise_video(x, trk, R, D, 2, None).cuts == []
