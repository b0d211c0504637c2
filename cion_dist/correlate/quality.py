"""Clustering quality against true identities: pairwise P/R/F, BCubed P/R/F and NMI (pure numpy).

Images a method removed (label -1) count as singletons: their true same-person pairs are missed, so dropping
data never inflates recall. ``score`` also reports the fraction of images kept.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def as_singletons(pred: np.ndarray) -> np.ndarray:
    """Replace -1 labels by fresh unique labels."""
    pred = np.asarray(pred, dtype=np.int64).copy()
    neg = pred < 0
    base = pred.max() + 1 if (~neg).any() else 0
    pred[neg] = base + np.arange(neg.sum())
    return pred


def _contingency(true: np.ndarray, pred: np.ndarray) -> sp.csr_matrix:
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    return sp.csr_matrix((np.ones(len(t), dtype=np.int64), (t, p)), shape=(t.max() + 1, p.max() + 1))


def _f(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def pairwise_prf(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Precision/recall/F over unordered image pairs put together (pred) vs truly together (true)."""
    c = _contingency(true, pred)
    pairs = lambda v: float((v * (v - 1) // 2).sum())  # noqa: E731
    tp = pairs(c.data)
    pred_pairs = pairs(np.asarray(c.sum(axis=0)).ravel())
    true_pairs = pairs(np.asarray(c.sum(axis=1)).ravel())
    p = tp / pred_pairs if pred_pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    return p, r, _f(p, r)


def bcubed_prf(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """BCubed (Bagga & Baldwin 1998): per-image precision |C ∩ L| / |C| and recall |C ∩ L| / |L|, averaged."""
    c = _contingency(true, pred).tocoo()
    n = c.data.sum()
    cluster = np.asarray(_contingency(true, pred).sum(axis=0)).ravel()
    label = np.asarray(_contingency(true, pred).sum(axis=1)).ravel()
    p = float((c.data**2 / cluster[c.col]).sum() / n)
    r = float((c.data**2 / label[c.row]).sum() / n)
    return p, r, _f(p, r)


def nmi(true: np.ndarray, pred: np.ndarray) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (sklearn's default)."""
    c = _contingency(true, pred).tocoo()
    n = float(c.data.sum())
    pt = np.asarray(_contingency(true, pred).sum(axis=1)).ravel() / n
    pp = np.asarray(_contingency(true, pred).sum(axis=0)).ravel() / n
    pij = c.data / n
    mi = float((pij * np.log(pij / (pt[c.row] * pp[c.col]))).sum())
    ht = float(-(pt * np.log(pt)).sum())
    hp = float(-(pp * np.log(pp)).sum())
    if ht == 0 and hp == 0:
        return 1.0
    denom = (ht + hp) / 2
    return max(0.0, mi / denom) if denom > 0 else 0.0


def score(true: np.ndarray, pred: np.ndarray) -> dict:
    """All figures for one labelling; ``pred`` may hold -1 for removed images."""
    true = np.asarray(true)
    pred = np.asarray(pred)
    if len(true) != len(pred):
        raise ValueError(f"true and predicted labels differ in length ({len(true)} vs {len(pred)})")
    full = as_singletons(pred)
    pp, pr, pf = pairwise_prf(true, full)
    bp, br, bf = bcubed_prf(true, full)
    return {
        "pairwise_precision": pp,
        "pairwise_recall": pr,
        "pairwise_f": pf,
        "bcubed_precision": bp,
        "bcubed_recall": br,
        "bcubed_f": bf,
        "nmi": nmi(true, full),
        "kept_fraction": float((pred >= 0).mean()) if len(pred) else 0.0,
        "clusters": int(len(np.unique(pred[pred >= 0]))),
        "true_identities": int(len(np.unique(true))),
    }


def format_table(rows: dict[str, dict]) -> str:
    """A plain-text table: one row per method."""
    cols = ["pairwise_precision", "pairwise_recall", "pairwise_f", "bcubed_f", "nmi", "kept_fraction", "clusters"]
    head = ["method", "pair_P", "pair_R", "pair_F", "bcubed_F", "NMI", "kept", "clusters"]
    lines = ["  ".join(f"{h:>10}" for h in head)]
    for name, r in rows.items():
        vals = [f"{r[c]:10.4f}" if isinstance(r[c], float) else f"{r[c]:>10}" for c in cols]
        lines.append("  ".join([f"{name:>10}"] + vals))
    return "\n".join(lines)
