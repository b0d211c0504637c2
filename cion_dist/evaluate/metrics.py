"""Re-ID retrieval metrics: CMC, mAP and mINP under the standard Market-1501 / MSMT17 protocol.

Pure torch/numpy, no IO. For every query the gallery is ranked by distance; gallery images that show the same
person *from the same camera* as the query are ignored (they are near-duplicates, not retrieval), and a query
without any remaining true match is skipped and counted. Ties in distance keep gallery order (stable sort), so
results are deterministic.

Definitions (per valid query, ranks counted after dropping ignored images, 1-based):
- CMC@k: 1 if the first true match is at rank <= k;
- AP: mean over true matches of precision at the match's rank;
- INP (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021):
  number of true matches / rank of the hardest (last) true match.

The feature path works on query chunks so memory grows with ``chunk_size x gallery`` only, never ``Q x G``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch

METRICS = ("mAP", "mINP", "rank1", "rank5", "rank10")


@dataclass
class ReidMetrics:
    """Aggregated retrieval figures (fractions in [0, 1])."""

    mAP: float
    mINP: float
    cmc: list[float] = field(default_factory=list)  # cmc[k-1] = fraction of valid queries matched within rank k
    num_queries: int = 0
    num_valid: int = 0
    num_skipped: int = 0  # queries with no valid true match in the gallery

    def rank(self, k: int) -> float:
        if not self.cmc:
            return float("nan")
        return self.cmc[min(k, len(self.cmc)) - 1]

    @property
    def rank1(self) -> float:
        return self.rank(1)

    @property
    def rank5(self) -> float:
        return self.rank(5)

    @property
    def rank10(self) -> float:
        return self.rank(10)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in METRICS}
        d.update(num_queries=self.num_queries, num_valid=self.num_valid, num_skipped=self.num_skipped)
        return d

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(self.as_dict())
        return d


@dataclass
class _Accumulator:
    max_rank: int
    ap_sum: float = 0.0
    inp_sum: float = 0.0
    hits: Optional[torch.Tensor] = None  # first-match rank histogram (index = rank-1), ranks beyond max_rank dropped
    num_queries: int = 0
    num_valid: int = 0

    def add(self, stats: dict) -> None:
        valid = stats["valid"]
        self.num_queries += int(valid.numel())
        self.num_valid += int(valid.sum())
        self.ap_sum += float(stats["ap"][valid].double().sum())
        self.inp_sum += float(stats["inp"][valid].double().sum())
        first = stats["first_rank"][valid]
        first = first[first <= self.max_rank].long() - 1
        h = torch.bincount(first, minlength=self.max_rank)[: self.max_rank]
        self.hits = h if self.hits is None else self.hits + h

    def result(self) -> ReidMetrics:
        n = self.num_valid
        if n == 0:
            return ReidMetrics(mAP=float("nan"), mINP=float("nan"), cmc=[float("nan")] * self.max_rank,
                               num_queries=self.num_queries, num_valid=0, num_skipped=self.num_queries)
        hits = self.hits if self.hits is not None else torch.zeros(self.max_rank, dtype=torch.long)
        cmc = (torch.cumsum(hits, 0).double() / n).tolist()
        return ReidMetrics(mAP=self.ap_sum / n, mINP=self.inp_sum / n, cmc=cmc, num_queries=self.num_queries,
                           num_valid=n, num_skipped=self.num_queries - n)


def _as_long(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.long)


def ranking_stats(dist: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor, g_pids: torch.Tensor,
                  g_cams: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-query first-match rank, AP, INP and validity for a ``(B, G)`` block of distances (smaller = closer)."""
    order = torch.sort(dist, dim=1, stable=True).indices
    gp = g_pids[order]
    same_pid = gp == q_pids[:, None]
    del gp
    keep = ~(same_pid & (g_cams[order] == q_cams[:, None]))
    del order
    match = same_pid & keep
    del same_pid
    rank = torch.cumsum(keep, dim=1, dtype=torch.int32)  # rank among non-ignored gallery images
    del keep
    npos = match.sum(1)
    cum_match = torch.cumsum(match, dim=1, dtype=torch.int32)
    prec = torch.where(match, cum_match.float() / rank.clamp(min=1).float(), torch.zeros((), dtype=torch.float32))
    del cum_match
    ap = prec.sum(1, dtype=torch.float64) / npos.clamp(min=1)
    del prec
    big = torch.iinfo(torch.int32).max
    first = torch.where(match, rank, torch.full((), big, dtype=torch.int32)).amin(1)
    last = torch.where(match, rank, torch.zeros((), dtype=torch.int32)).amax(1)
    valid = npos > 0
    inp = npos.double() / last.clamp(min=1).double()
    return {"first_rank": first, "ap": ap, "inp": inp, "valid": valid}


def evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams, max_rank: int = 10) -> ReidMetrics:
    """Metrics from a full ``(Q, G)`` distance matrix (numpy or torch), e.g. after re-ranking."""
    dist = torch.as_tensor(np.asarray(distmat) if not torch.is_tensor(distmat) else distmat)
    _check_shapes(dist.shape, q_pids, g_pids, q_cams, g_cams)
    acc = _Accumulator(max_rank)
    acc.add(ranking_stats(dist, _as_long(q_pids), _as_long(q_cams), _as_long(g_pids), _as_long(g_cams)))
    return acc.result()


def _check_shapes(shape, q_pids, g_pids, q_cams, g_cams) -> None:
    q, g = shape
    if len(q_pids) != q or len(q_cams) != q:
        raise ValueError(f"{q} query rows but {len(q_pids)} pids / {len(q_cams)} cameras")
    if len(g_pids) != g or len(g_cams) != g:
        raise ValueError(f"{g} gallery rows but {len(g_pids)} pids / {len(g_cams)} cameras")


def _to_float(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    return t.float().contiguous()


def distance_block(qf: torch.Tensor, gf: torch.Tensor, metric: str = "cosine", g_sqnorm: Optional[torch.Tensor] = None,
                   backend: str = "torch") -> torch.Tensor:
    """``(B, G)`` distances between query rows and gallery rows; smaller is closer.

    ``cosine`` expects L2-normalised rows and returns ``1 - q.g``; ``euclidean`` returns squared L2 distances.
    """
    if backend == "faiss":
        import faiss

        mt = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        d = torch.from_numpy(faiss.pairwise_distances(qf.numpy(), gf.numpy(), mt=mt))
        return 1.0 - d if metric == "cosine" else d
    if backend != "torch":
        raise ValueError(f"unknown distance backend {backend!r}; use 'torch' or 'faiss'")
    if metric == "cosine":
        return 1.0 - qf @ gf.T
    if metric == "euclidean":
        gn = g_sqnorm if g_sqnorm is not None else (gf * gf).sum(1)
        d = (qf * qf).sum(1, keepdim=True) + gn[None, :] - 2.0 * (qf @ gf.T)
        return d.clamp_(min=0)
    raise ValueError(f"unknown metric {metric!r}; use 'cosine' or 'euclidean'")


def evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, *, metric: str = "cosine", normalize: bool = True,
                      max_rank: int = 10, chunk_size: int = 512, backend: str = "torch") -> ReidMetrics:
    """Metrics straight from features, one chunk of queries at a time (memory ~ ``chunk_size x G``)."""
    qf, gf = _to_float(qf), _to_float(gf)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"feature shapes do not match: query {tuple(qf.shape)}, gallery {tuple(gf.shape)}")
    _check_shapes((qf.shape[0], gf.shape[0]), q_pids, g_pids, q_cams, g_cams)
    if normalize:
        qf = torch.nn.functional.normalize(qf, dim=1)
        gf = torch.nn.functional.normalize(gf, dim=1)
    qp, qc, gp, gc = _as_long(q_pids), _as_long(q_cams), _as_long(g_pids), _as_long(g_cams)
    g_sqnorm = (gf * gf).sum(1) if metric == "euclidean" else None
    acc = _Accumulator(max_rank)
    chunk_size = max(1, int(chunk_size))
    with torch.no_grad():
        for s in range(0, qf.shape[0], chunk_size):
            e = min(s + chunk_size, qf.shape[0])
            d = distance_block(qf[s:e], gf, metric, g_sqnorm, backend)
            acc.add(ranking_stats(d, qp[s:e], qc[s:e], gp, gc))
            del d
    return acc.result()


def naive_metrics(distmat: np.ndarray, q_pids, g_pids, q_cams, g_cams, max_rank: int = 10) -> ReidMetrics:
    """Reference loop over queries on a full numpy matrix: the slow, obviously-correct baseline for checks."""
    distmat = np.asarray(distmat)
    q_pids, g_pids, q_cams, g_cams = map(np.asarray, (q_pids, g_pids, q_cams, g_cams))
    cmc_hits = np.zeros(max_rank)
    aps, inps, nq = [], [], distmat.shape[0]
    for i in range(nq):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        good = (g_pids[order] == q_pids[i])[keep]
        if not good.any():
            continue
        pos = np.flatnonzero(good) + 1
        if pos[0] <= max_rank:
            cmc_hits[pos[0] - 1:] += 1
        aps.append(np.mean(np.arange(1, len(pos) + 1) / pos))
        inps.append(len(pos) / pos[-1])
    n = len(aps)
    if n == 0:
        return ReidMetrics(math.nan, math.nan, [math.nan] * max_rank, nq, 0, nq)
    return ReidMetrics(float(np.mean(aps)), float(np.mean(inps)), (cmc_hits / n).tolist(), nq, n, nq - n)
