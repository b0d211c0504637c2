"""P x K identity batches (METHOD.md 5.3), deterministic from (seed, epoch) so a resumed run replays them.

Each epoch every identity's images are shuffled and cut into groups of K: an identity with fewer than K images
draws K with replacement; one with more is padded with random repeats of its own images up to a multiple of K,
so every image is seen once per epoch. A global batch takes one group from each of ``P * world_size`` identities
chosen at random among those with groups left; the epoch ends when fewer identities than that remain. Rank ``r``
receives the ``r``-th contiguous run of ``P`` groups of every global batch, so each rank batch is
``[id_1 x K, id_2 x K, ...]``: the layout ``IdentityDINOLoss`` expects.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from cion_dist.errors import ConfigError, DataError


def epoch_plan(labels: np.ndarray, k: int, ids_per_batch: int, seed: int, epoch: int) -> np.ndarray:
    """Row indices of every global batch of one epoch: ``[steps, ids_per_batch * k]``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), int(epoch), int(k)])
    order = np.argsort(labels, kind="stable")
    ids, starts = np.unique(labels[order], return_index=True)
    groups: list[list[np.ndarray]] = []
    for s, e in zip(starts, list(starts[1:]) + [len(labels)]):
        idx = rng.permutation(order[s:e])
        if len(idx) < k:
            idx = rng.choice(idx, size=k, replace=True)
        elif len(idx) % k:
            idx = np.concatenate([idx, rng.choice(idx, size=k - len(idx) % k, replace=False)])
        groups.append(list(idx.reshape(-1, k)))
    avail = [g for g in range(len(groups))]
    batches = []
    while len(avail) >= ids_per_batch:
        pick = rng.choice(len(avail), size=ids_per_batch, replace=False)
        chosen = [avail[i] for i in pick]
        batches.append(np.concatenate([groups[g].pop() for g in chosen]))
        avail = [g for g in avail if groups[g]]
    if not batches:
        return np.zeros((0, ids_per_batch * k), dtype=np.int64)
    return np.stack(batches).astype(np.int64)


class PKSampler:
    """Per-rank batches of ``batch_per_rank`` row indices (``batch_per_rank / K`` identities x K images).

    The batch size stays fixed while K grows, as in the reference (per-GPU batch divisible by every K used).
    ``batches(epoch, k, start)`` resumes mid-epoch by skipping the ``start`` batches already trained on.
    """

    def __init__(self, labels: np.ndarray, batch_per_rank: int, world_size: int = 1, rank: int = 0, seed: int = 0):
        self.labels = np.asarray(labels)
        self.batch_per_rank = int(batch_per_rank)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self.num_ids = len(np.unique(self.labels))

    def ids_per_rank(self, k: int) -> int:
        if k < 1 or self.batch_per_rank % k:
            raise ConfigError(f"batch_size_per_worker={self.batch_per_rank} is not divisible by K={k}")
        return self.batch_per_rank // k

    def _plan(self, epoch: int, k: int) -> np.ndarray:
        key = (epoch, k)
        if key not in self._cache:
            ids = self.ids_per_rank(k) * self.world_size
            if self.num_ids < ids:
                raise DataError(f"{self.num_ids} identities cannot fill one batch of {ids} identities (K={k})")
            self._cache = {key: epoch_plan(self.labels, k, ids, self.seed, epoch)}
        return self._cache[key]

    def steps(self, epoch: int, k: int) -> int:
        return len(self._plan(epoch, k))

    def batches(self, epoch: int, k: int, start: int = 0) -> Iterator[np.ndarray]:
        w = self.batch_per_rank
        for batch in self._plan(epoch, k)[start:]:
            yield batch[self.rank * w : (self.rank + 1) * w]
