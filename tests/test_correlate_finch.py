"""The FINCH baseline against the authors' implementation (pip package ``finch-clust``) on fixed data."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cion_dist.correlate import baselines

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the package warns that its optional ANN backend is absent
    finch_ref = pytest.importorskip("finch.finch")


def _blobs(seed: int, n_people: int, d: int = 32) -> np.ndarray:
    """People as noisy directions at several scales: raw rows of unequal norm, as un-normalised features are."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, d))
    sizes = rng.integers(3, 25, n_people)
    rows = [c + rng.normal(scale=rng.uniform(0.3, 1.2), size=(s, d)) for c, s in zip(centres, sizes)]
    x = np.vstack(rows) * rng.uniform(0.5, 3.0, size=(sum(sizes), 1))
    return x.astype(np.float32)


@pytest.mark.parametrize("seed,n_people", [(0, 12), (1, 40), (2, 80), (3, 150)])
def test_finch_matches_the_reference_implementation(seed, n_people):
    x = _blobs(seed, n_people)
    c, num_clust, _ = finch_ref.FINCH(x, distance="cosine", ensure_early_exit=True, verbose=False)
    ours = baselines.finch_hierarchy(x)
    assert [len(np.unique(p)) for p in ours] == list(num_clust)
    for level, part in enumerate(ours):
        assert adjusted_rand_score(c[:, level], part) == pytest.approx(1.0)


def test_finch_drops_the_final_single_cluster_level():
    x = _blobs(5, 6)
    parts = baselines.finch_hierarchy(x)
    assert parts and all(len(np.unique(p)) > 1 for p in parts)
