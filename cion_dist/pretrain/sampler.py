"""P x K identity batches as vectorised numpy plans, deterministic from (seed, epoch, K, shard).

Groups. Each epoch every identity's images are shuffled and cut into groups of K, padded as the reference sampler
pads (docs/pretrain_data.md): an identity with fewer than K images draws K with replacement (one group); one with
``n >= K`` gets ``n % K`` extra distinct images of its own and yields ``(n + n % K) // K`` groups (the rows left
over, fewer than K, rest this epoch). So with K = 8 an identity of 13 images gives 2 groups, not 3.

Layout. A batch is P groups of P different identities, ``[id_1 x K, id_2 x K, ...]``: the layout
``IdentityDINOLoss`` expects. The number of batches is the largest ``T`` with ``sum_i min(g_i, T) >= P * T``
(``steps_for``): the most batches of P distinct identities the groups allow. The groups of the identities, in a
random order and each identity's groups one after another, fill a ``T x P`` grid column by column (position ``q``
goes to batch ``q mod T``), so an identity's groups land in different batches; batches are then shuffled. Only an
identity with more than ``T`` groups, and fewer than P groups at the end, are left out, so an epoch sees nearly
every image (the reference, drawing P identities at random until fewer than P remain, sees ~98% on 4,000
identities and far fewer on a rank's share of a small corpus, where its last draws find too few identities).

Cost: one sort of the rows and a few passes over the groups, ``O(N log N)``; the length ``T`` follows from the
per-identity counts alone, so every rank knows every shard's step count without planning it.
"""

from __future__ import annotations

import numpy as np

from cion_dist.errors import ConfigError


def identity_groups(counts: np.ndarray, k: int) -> np.ndarray:
    """Groups of K per identity under the reference padding: 1 below K, else ``(n + n % K) // K``."""
    n = np.asarray(counts, dtype=np.int64)
    return np.where(n < k, 1, (n + n % k) // k)


def steps_for(groups: np.ndarray, p: int) -> int:
    """The largest ``T`` with ``sum(min(groups, T)) >= p * T`` (0 when fewer than ``p`` identities)."""
    g = np.sort(np.asarray(groups, dtype=np.int64))
    if p < 1:
        raise ConfigError(f"identities per batch must be >= 1 (got {p})")
    if len(g) < p:
        return 0
    csum = np.concatenate([[0], np.cumsum(g)])

    def ok(t: int) -> bool:
        below = int(np.searchsorted(g, t, side="left"))  # groups < t
        return int(csum[below]) + t * (len(g) - below) >= p * t

    lo, hi = 0, int(csum[-1]) // p  # f(t) = sum min(g, t) - p t is concave with f(0) = 0: {t: f(t) >= 0} = [0, T]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def ids_per_batch(batch: int, k: int) -> int:
    if k < 1 or batch % k:
        raise ConfigError(f"batch_size_per_worker={batch} is not divisible by K={k}")
    return batch // k


def plan_seed(seed: int, epoch: int, k: int, shard: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), int(epoch), int(k), int(shard)])


def counts_plan(counts: np.ndarray, k: int, p: int, rng: np.random.Generator) -> np.ndarray:
    """Batches over rows grouped by identity (identity ``i`` holds rows ``[start_i, start_i + counts_i)``):
    ``[T, p * k]`` row indices, ``T = steps_for(identity_groups(counts, k), p)``."""
    n = np.asarray(counts, dtype=np.int64)
    n_ids = len(n)
    g = identity_groups(n, k)
    t = steps_for(g, p)
    if t == 0:
        return np.zeros((0, p * k), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    rows_total = int(n.sum())
    ident = np.repeat(np.arange(n_ids), n)
    # two independent shuffles of every identity's rows: the images, and the pick of the n % K padding repeats
    shuffled = np.argsort(ident + rng.random(rows_total), kind="stable")
    extras = np.argsort(ident + rng.random(rows_total), kind="stable")
    # the grid: identities in random order, each one's first min(g, T) groups in a row; position q -> batch q mod T
    used = np.minimum(g, t)
    order = rng.permutation(n_ids)
    slot_ident = np.repeat(order, used[order])[: t * p]
    block_start = np.concatenate([[0], np.cumsum(used[order])[:-1]])
    slot_group = np.arange(t * p) - np.repeat(block_start, used[order])[: t * p]
    # element c of group j of identity i is padded position pos = j*K + c of that identity's image list
    pos = slot_group[:, None] * k + np.arange(k)[None, :]
    ni = n[slot_ident][:, None]
    base = starts[slot_ident][:, None]
    real = shuffled[base + np.minimum(pos, ni - 1)]
    pad = extras[base + np.clip(pos - ni, 0, None) % np.maximum(ni, 1)]
    drawn = base + np.floor(rng.random(pos.shape) * ni).astype(np.int64)  # fewer than K: with replacement
    rows = np.where(ni < k, drawn, np.where(pos < ni, real, pad))
    grid = rows.reshape(p, t, k).transpose(1, 0, 2)  # [batch, identity slot, K]
    grid = grid[rng.permutation(t)]
    grid = np.take_along_axis(grid, rng.permuted(np.tile(np.arange(p), (t, 1)), axis=1)[:, :, None], axis=1)
    return grid.reshape(t, p * k).astype(np.int64)


def epoch_plan(labels: np.ndarray, k: int, ids_per_batch: int, seed: int, epoch: int) -> np.ndarray:
    """Row indices of every batch of one epoch for rows labelled in any order: ``[steps, ids_per_batch * k]``."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    _, counts = np.unique(labels[order], return_counts=True)
    rng = np.random.default_rng(plan_seed(seed, epoch, k))
    return order[counts_plan(counts, k, ids_per_batch, rng)]
