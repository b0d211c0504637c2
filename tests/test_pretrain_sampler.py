"""The P x K plans (pure numpy): layout, the reference padding, coverage against a transcription of the reference
sampler, equal epochs over identity shards, resume, schedule indexing, driver-side data errors."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from cion_dist.errors import ConfigError, DataError
from cion_dist.pretrain.sampler import counts_plan, epoch_plan, identity_groups, steps_for
from cion_dist.pretrain.schedules import Schedules, for_epochs
from cion_dist.pretrain.stream import RunPlan, assign_shards, shard_batches, shard_counts_from_rows


def reference_sampler(counts, k, p, seed=0):
    """The reference's P x K list, transcribed from its description (docs/pretrain_data.md): per identity, K with
    replacement below K, else ``n % K`` extra draws; then P identities at a time at random among those with groups
    left, one group each, until fewer than P remain. Returns (batches, images covered)."""
    rnd, rng = random.Random(seed), np.random.default_rng(seed)
    groups = {}
    for i, n in enumerate(counts):
        idx = (
            list(rng.choice(n, k, replace=True))
            if n < k
            else list(range(n)) + list(rng.choice(n, n % k, replace=False))
        )
        rnd.shuffle(idx)
        groups[i] = [idx[j * k : (j + 1) * k] for j in range(len(idx) // k)]
    avail = [i for i in groups if groups[i]]
    seen, steps = set(), 0
    while len(avail) >= p:
        for i in rnd.sample(avail, p):
            seen.update((i, int(x)) for x in groups[i].pop())
            if not groups[i]:
                avail.remove(i)
        steps += 1
    return steps, len(seen)


def _corpus(n_ids=4000, seed=1):
    return np.random.default_rng(seed).geometric(1 / 16, n_ids)  # mean ~16 images per identity


def test_layout_replacement_padding_and_determinism():
    labels = np.repeat(np.arange(7), np.arange(1, 8))  # identity 0 has fewer than K images
    plan = epoch_plan(labels, k=3, ids_per_batch=2, seed=5, epoch=0)
    assert plan.shape[1] == 6 and len(plan) >= 4
    for batch in plan:
        groups = labels[batch].reshape(2, 3)
        assert (groups == groups[:, :1]).all() and groups[0, 0] != groups[1, 0]
    # groups per identity: 1 below K; else (n + n % K) // K: 4 images -> 5 -> 1 group, 5 -> 7 -> 2, 7 -> 8 -> 2
    assert identity_groups(np.arange(1, 8), 3).tolist() == [1, 1, 1, 1, 2, 2, 2]
    assert identity_groups([13, 16, 7], 8).tolist() == [2, 2, 1]
    one = epoch_plan(labels, k=3, ids_per_batch=1, seed=5, epoch=0)
    assert len(one) == identity_groups(np.arange(1, 8), 3).sum()  # one identity per batch: every group is used
    assert [0, 0, 0] in one.tolist()  # drawn with replacement
    np.testing.assert_array_equal(plan, epoch_plan(labels, 3, 2, 5, 0))
    assert not np.array_equal(plan, epoch_plan(labels, 3, 2, 5, 1))
    with pytest.raises(ConfigError, match="identities per batch"):
        steps_for([3, 3], 0)


def test_steps_is_the_largest_feasible_count():
    rng = np.random.default_rng(0)
    for _ in range(200):
        g = rng.integers(1, 12, size=rng.integers(1, 30))
        p = int(rng.integers(1, 8))
        brute = max(t for t in range(0, int(g.sum()) + 1) if np.minimum(g, t).sum() >= p * t)
        assert steps_for(g, p) == brute
        assert len(counts_plan(g * 2, 2, p, np.random.default_rng(1))) == steps_for(identity_groups(g * 2, 2), p)


def test_coverage_and_epoch_length_against_the_reference():
    """4,000 identities, 8 ranks x 120 images: the reference covers ~98% at K = 2 and pads to 72-74 steps at K = 8
    (80 with padding to a multiple of K). The plan here sees at least as much, with the same padding, on the whole
    corpus and on each rank's identity shard alone (where the reference's last draws would find too few)."""
    counts = _corpus()
    labels = np.repeat(np.arange(len(counts)), counts)
    for k in (2, 8):
        p = 120 // k
        ref_steps, ref_seen = reference_sampler(counts, k, p)
        plan = epoch_plan(labels, k, p, seed=0, epoch=0)
        seen = len(np.unique(plan))
        assert seen >= ref_seen - 0.002 * len(labels), (k, seen, ref_seen)
        # 8 ranks: the reference's global list is cut in 8; the plan's steps per rank are within 3% of that
        assert abs(len(plan) / 8 - ref_steps / 8) <= 0.03 * ref_steps / 8, (len(plan), ref_steps)
        if k == 2:
            assert ref_seen / len(labels) > 0.97 and seen / len(labels) > 0.99
        else:
            ceil_pad_groups = np.maximum(1, -(-counts // 8)).sum()
            assert ceil_pad_groups / p / 8 >= 79 and len(plan) / 8 < 75
    # identity-sharded: 8 shards of 500 identities, each planned alone
    shard_of = np.arange(len(counts)) % 8
    for k in (2,):
        seen = 0
        for s in range(8):
            c = counts[shard_of == s]
            seen += len(np.unique(counts_plan(c, k, 60, np.random.default_rng(s))))
        _, ref_rank = reference_sampler(counts[shard_of == 0], k, 60)
        assert seen / len(labels) > 0.99 and ref_rank / counts[shard_of == 0].sum() < 0.93


def _plan(counts_by_shard, world=2, batch=4, epochs=3, gradual=([2, 3], [1, 2])):
    index = pa.table(
        {
            "identity_id": pa.array(
                np.concatenate([np.arange(len(c)) + 100 * s for s, c in enumerate(counts_by_shard)])
            ),
            "shard": pa.array(np.concatenate([np.full(len(c), s) for s, c in enumerate(counts_by_shard)])),
            "images": pa.array(np.concatenate(counts_by_shard)),
        }
    )
    uris = {s: f"mem://shard-{s}" for s in range(len(counts_by_shard))}
    return RunPlan.build(index, uris, world, batch, 7, epochs, *gradual, steps_per_task=2)


def test_run_plan_equal_epochs_deterministic_items_and_resume():
    rng = np.random.default_rng(3)
    counts = [rng.integers(1, 9, size=n) for n in (12, 10, 11, 9)]
    plan = _plan(counts)
    assert sorted(s for r in plan.rank_shards for s in r) == [0, 1, 2, 3]
    for e in range(3):
        k = plan.ks[e]
        steps = plan.epoch_steps(e)
        assert steps == min(plan.rank_steps(r, k) for r in range(2)) > 0
        for r in range(2):
            items = plan.items(r, range(e, e + 1))
            assert sum(i["steps"] for i in items) == steps  # every rank takes the same number of steps
            assert [i["first"] for i in items] == list(np.cumsum([0] + [i["steps"] for i in items])[:-1])
            assert {i["shard"] for i in items} <= set(plan.rank_shards[r])
            assert max(i["steps"] for i in items) <= 2  # one task makes at most steps_per_task batches
            for s in {i["shard"] for i in items}:  # a shard's items cover its plan's first steps, in order
                offs = [(i["offset"], i["steps"]) for i in items if i["shard"] == s]
                assert [o for o, _ in offs] == list(np.cumsum([0] + [n for _, n in offs])[:-1])
    assert plan.items(0, range(3)) == _plan(counts).items(0, range(3))
    assert plan.shard_order(0, 0) != plan.shard_order(1, 0) or len(plan.rank_shards[0]) < 2
    # a shard's batches from a resume point are the tail of the full sequence
    labels = np.repeat(np.arange(len(counts[0])), counts[0])
    table = pa.table({"identity_id": labels})
    item = {"epoch": 1, "shard": 0, "first": 5, "steps": 4, "k": 2}
    full = list(shard_batches(table, item, 4, 7))
    tail = list(shard_batches(table, item, 4, 7, skip=2))
    assert [s for s, _ in full] == [5, 6, 7, 8] and [s for s, _ in tail] == [7, 8]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(full[2:], tail))
    second = list(shard_batches(table, {**item, "first": 7, "steps": 2, "offset": 2}, 4, 7))  # the next task's part
    assert [s for s, _ in second] == [7, 8] and all(np.array_equal(a[1], b[1]) for a, b in zip(full[2:], second))
    np.testing.assert_array_equal(shard_counts_from_rows(labels), counts[0])


def test_shards_balance_over_ranks():
    images = np.array([50, 40, 30, 30, 20, 10, 10, 10])
    ranks = assign_shards(images, 3)
    loads = sorted(images[r].sum() for r in ranks)
    assert loads[-1] - loads[0] <= 10 and sorted(sum(ranks, [])) == list(range(8))


def test_too_few_identities_is_a_driver_side_data_error():
    with pytest.raises(DataError, match=r"worker 1 of 2 holds 1 identities .* one batch of 2 identities x K=2"):
        _plan([np.array([5, 5, 5]), np.array([9])], batch=4, gradual=([3], [2])).check()
    with pytest.raises(DataError, match="2 shards for 3 workers"):
        _plan([np.array([5, 5]), np.array([5, 5])], world=3)
    _plan([np.array([5, 5, 5]), np.array([5, 5])], batch=4, gradual=([3], [2])).check()


def test_schedules_read_at_the_running_step_over_real_epoch_lengths():
    """K grows at epoch 2 and epochs shorten from 10 to 6 steps. The reference reads ``len(loader) * epoch + it``
    from arrays sized by the first loader: at the milestone its index falls back from 19 to 12 (lr rises again)
    and it never reaches the end. The running step over the real lengths is monotone and ends at min_lr."""
    lengths = [10, 10, 6, 6]
    kw = dict(lr=1.0, min_lr=0.01, weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.996)
    s = for_epochs(lengths, warmup_epochs=1, **kw)
    assert len(s.lr) == sum(lengths)
    lr = [s.values(i)["lr"] for i in range(sum(lengths))]
    assert lr[0] == 0.0 and lr[9] == pytest.approx(1.0)  # warm-up is exactly the first epoch
    assert all(a >= b for a, b in zip(lr[10:], lr[11:])) and lr[-1] == pytest.approx(0.01, abs=0.01)
    assert s.values(sum(lengths) - 1)["momentum"] == pytest.approx(1.0, abs=1e-3)
    ref = Schedules.build(epochs=4, steps_per_epoch=10, warmup_epochs=1, **kw)
    ref_index = [len_e * e + it for e, len_e in enumerate(lengths) for it in range(len_e)]
    ref_lr = [ref.values(i)["lr"] for i in ref_index]
    assert ref_index[20] < ref_index[19] and ref_lr[20] > ref_lr[19]  # the jump back at the milestone
    assert ref_lr[-1] > 0.2  # the cosine is cut off far from its end
