"""Re-ID retrieval metrics: CMC, mAP and mINP under the standard Market-1501 / MSMT17 protocol.

Pure torch/numpy, no IO. For every query the gallery is ranked by distance; gallery images that show the same
person *from the same camera* as the query are ignored (they are near-duplicates, not retrieval), and a query
without any remaining true match is skipped and counted. Ties in distance are settled by gallery order, so
results are deterministic.

Definitions (per valid query, ranks counted after dropping ignored images, 1-based):
- CMC@k: 1 if the first true match is at rank <= k;
- AP: mean over true matches of precision at the match's rank;
- INP (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021):
  number of true matches / rank of the hardest (last) true match.

The feature path works on query chunks so memory grows with ``chunk_size x gallery`` only, never ``Q x G``, and
ranks true matches by counting instead of sorting whole rows (``ranking_stats``); the sort-based scan
(``ranking_stats_sorted``) gives the same numbers and is kept as the baseline.
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
        h = torch.bincount(first, minlength=self.max_rank)[: self.max_rank].cpu()
        self.hits = h if self.hits is None else self.hits + h

    def result(self) -> ReidMetrics:
        n = self.num_valid
        if n == 0:
            return ReidMetrics(
                mAP=float("nan"),
                mINP=float("nan"),
                cmc=[float("nan")] * self.max_rank,
                num_queries=self.num_queries,
                num_valid=0,
                num_skipped=self.num_queries,
            )
        hits = self.hits if self.hits is not None else torch.zeros(self.max_rank, dtype=torch.long)
        cmc = (torch.cumsum(hits, 0).double() / n).tolist()
        return ReidMetrics(
            mAP=self.ap_sum / n,
            mINP=self.inp_sum / n,
            cmc=cmc,
            num_queries=self.num_queries,
            num_valid=n,
            num_skipped=self.num_queries - n,
        )


def _as_ids(x) -> torch.Tensor:
    """Ids as int32: the per-chunk gathers of gallery ids are the largest temporaries after the sort indices."""
    return torch.as_tensor(np.asarray(x).astype(np.int32, copy=False))


def ranking_stats(
    dist: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor, g_pids: torch.Tensor, g_cams: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-query first-match rank, AP, INP and validity for a ``(B, G)`` block of distances (smaller = closer).

    No row is sorted. A query has few true matches, so only those are sorted (ties by gallery index); each
    negative then finds by binary search how many true matches precede it, and a per-row histogram of those
    counts gives, for the j-th true match, the number of negatives ranked before it. Its rank is that number
    plus j. Exact ties between a negative and a true match are settled by gallery index, as a stable sort would.
    """
    b_rows, n_gal = dist.shape
    same_pid = g_pids[None, :] == q_pids[:, None]
    pos = same_pid & (g_cams[None, :] != q_cams[:, None])
    neg = ~same_pid  # same pid + same camera: ignored, neither positive nor negative
    del same_pid
    rows, cols = pos.nonzero(as_tuple=True)  # row-major: gallery order inside a row
    del pos
    npos = torch.bincount(rows, minlength=b_rows)
    valid = npos > 0
    pmax = int(npos.max()) if b_rows else 0
    zeros = torch.zeros(b_rows, dtype=torch.float64, device=dist.device)
    if pmax == 0:
        none = torch.zeros(b_rows, dtype=torch.int32, device=dist.device)
        return {"first_rank": none, "ap": zeros, "inp": zeros, "valid": valid}
    slot = torch.arange(rows.numel(), device=dist.device) - (torch.cumsum(npos, 0) - npos)[rows]
    pos_d = torch.full((b_rows, pmax), float("inf"), dtype=dist.dtype, device=dist.device)
    pos_d[rows, slot] = dist[rows, cols]
    pos_i = torch.full((b_rows, pmax), n_gal, dtype=torch.long, device=dist.device)
    pos_i[rows, slot] = cols
    pos_d, perm = torch.sort(pos_d, dim=1, stable=True)
    pos_i = pos_i.gather(1, perm)
    d = dist.contiguous()
    before = torch.searchsorted(pos_d, d, right=False, out_int32=True)  # true matches strictly closer
    tie = (torch.searchsorted(pos_d, d, right=True, out_int32=True) > before) & neg
    if bool(tie.any()):
        tr, tc = tie.nonzero(as_tuple=True)
        earlier = ((pos_d[tr] == d[tr, tc][:, None]) & (pos_i[tr] < tc[:, None])).sum(1)
        before[tr, tc] += earlier.to(before.dtype)
    del tie
    # hist[r, k] = negatives of row r preceded by exactly k true matches; non-negatives go to a spare bin
    width = pmax + 2
    offsets = (torch.arange(b_rows, device=dist.device, dtype=torch.int32) * width)[:, None]
    key = torch.where(neg, before, torch.full((), pmax + 1, dtype=before.dtype, device=dist.device)) + offsets
    del before
    hist = torch.bincount(key.view(-1), minlength=b_rows * width).view(b_rows, width)
    del key
    neg_before = torch.cumsum(hist, dim=1)[:, :pmax]  # negatives ranked before the j-th true match
    j = torch.arange(1, pmax + 1, device=dist.device)
    rank = j[None, :] + neg_before  # 1-based rank of the j-th true match among non-ignored images
    live = j[None, :] <= npos[:, None]
    ap = torch.where(live, j[None, :].double() / rank.double(), zeros[:, None]).sum(1) / npos.clamp(min=1)
    first = rank[:, 0].to(torch.int32)
    last = rank.gather(1, (npos - 1).clamp(min=0)[:, None])[:, 0]
    inp = torch.where(valid, npos.double() / last.double(), zeros)
    first = torch.where(valid, first, torch.zeros_like(first))
    return {"first_rank": first, "ap": torch.where(valid, ap, zeros), "inp": inp, "valid": valid}


def ranking_stats_sorted(
    dist: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor, g_pids: torch.Tensor, g_cams: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``ranking_stats`` the straightforward way: sort every row of the block, then scan it. Same results; kept as
    the baseline the benchmark compares against (the sort is most of the cost)."""
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


def _stats_fn(ranking: str):
    if ranking == "count":
        return ranking_stats
    if ranking == "sort":
        return ranking_stats_sorted
    raise ValueError(f"unknown ranking method {ranking!r}; use 'count' or 'sort'")


def evaluate_distances(
    distmat, q_pids, g_pids, q_cams, g_cams, max_rank: int = 10, ranking: str = "count"
) -> ReidMetrics:
    """Metrics from a full ``(Q, G)`` distance matrix (numpy or torch), e.g. after re-ranking."""
    dist = torch.as_tensor(np.asarray(distmat) if not torch.is_tensor(distmat) else distmat)
    _check_shapes(dist.shape, q_pids, g_pids, q_cams, g_cams)
    acc = _Accumulator(max_rank)
    acc.add(_stats_fn(ranking)(dist, _as_ids(q_pids), _as_ids(q_cams), _as_ids(g_pids), _as_ids(g_cams)))
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


def distance_block(
    qf: torch.Tensor,
    gf: torch.Tensor,
    metric: str = "cosine",
    g_sqnorm: Optional[torch.Tensor] = None,
    backend: str = "torch",
) -> torch.Tensor:
    """``(B, G)`` distances between query rows and gallery rows; smaller is closer.

    ``cosine`` expects L2-normalised rows and returns ``1 - q.g``; ``euclidean`` returns squared L2 distances.
    """
    if backend == "faiss":
        import faiss

        mt = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        d = torch.from_numpy(
            faiss.pairwise_distances(np.ascontiguousarray(qf.numpy()), np.ascontiguousarray(gf.numpy()), metric=mt)
        )
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


def evaluate_features(
    qf,
    gf,
    q_pids,
    g_pids,
    q_cams,
    g_cams,
    *,
    metric: str = "cosine",
    normalize: bool = True,
    max_rank: int = 10,
    chunk_size: int = 512,
    backend: str = "torch",
    device: Optional[str] = None,
    ranking: str = "count",
) -> ReidMetrics:
    """Metrics straight from features, one chunk of queries at a time (memory ~ ``chunk_size x G``).

    ``device`` (e.g. ``cuda``) runs the torch backend there; the FAISS backend always runs on CPU."""
    qf, gf = _to_float(qf), _to_float(gf)
    if device and backend == "torch":
        qf, gf = qf.to(device), gf.to(device)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"feature shapes do not match: query {tuple(qf.shape)}, gallery {tuple(gf.shape)}")
    _check_shapes((qf.shape[0], gf.shape[0]), q_pids, g_pids, q_cams, g_cams)
    if normalize:
        qf = torch.nn.functional.normalize(qf, dim=1)
        gf = torch.nn.functional.normalize(gf, dim=1)
    qp, qc, gp, gc = (t.to(qf.device) for t in (_as_ids(q_pids), _as_ids(q_cams), _as_ids(g_pids), _as_ids(g_cams)))
    g_sqnorm = (gf * gf).sum(1) if metric == "euclidean" else None
    acc = _Accumulator(max_rank)
    stats = _stats_fn(ranking)
    chunk_size = max(1, int(chunk_size))
    with torch.no_grad():
        for s in range(0, qf.shape[0], chunk_size):
            e = min(s + chunk_size, qf.shape[0])
            d = distance_block(qf[s:e], gf, metric, g_sqnorm, backend)
            acc.add(stats(d, qp[s:e], qc[s:e], gp, gc))
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
            cmc_hits[pos[0] - 1 :] += 1
        aps.append(np.mean(np.arange(1, len(pos) + 1) / pos))
        inps.append(len(pos) / pos[-1])
    n = len(aps)
    if n == 0:
        return ReidMetrics(math.nan, math.nan, [math.nan] * max_rank, nq, 0, nq)
    return ReidMetrics(float(np.mean(aps)), float(np.mean(inps)), (cmc_hits / n).tolist(), nq, n, nq - n)
