"""The correlate stage: embeddings -> identity labels by CION's three denoising levels (``run(job)``).

Flow: catalogue the embed output (videos, their order and parts; no vectors); calibrate ``r``/``d`` unless set;
levels 1-2 as Ray tasks per group of videos, each reading its own vectors and returning level-2 identity sums;
level 3 as Ray tasks per sliding window over a sharded FAISS index of those identities' centroids; one guarded
union-find over all window links on the driver; the radius re-check of identities merged across videos as tasks;
the size check; one Parquet part per video written by tasks
(``image_id, identity_id, tracklet_id, video_id, removed_at, reason``); with ground truth, a quality table for CION
and the baselines (``quality.json``, which reads the whole corpus on the driver); ``_SUCCESS.json`` last.

The driver holds a few bytes per image (level-2 group, reason, final identity) and one vector per level-2
identity, so its memory does not grow with the embedding width times the corpus.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from cion_dist.config.job import Job
from cion_dist.correlate import baselines, quality
from cion_dist.correlate.catalog import VideoCatalog, load_all, scan_embeddings
from cion_dist.correlate.denoise import IDENTITY_RADIUS, LEVEL_OF_REASON, REASONS, guarded_merge
from cion_dist.correlate.distributed import (calibrate_on_sample, radius_recheck, run_level3_links, run_levels12,
                                             write_outputs)
from cion_dist.correlate.geometry import l2_normalise
from cion_dist.correlate.inputs import EmbeddingSet, load_ground_truth
from cion_dist.correlate.linking import merged_identity, number_identities, plan_windows
from cion_dist.raycluster import ensure_ray
from cion_dist.stage import CorrelateResult, StageRun
from cion_dist.storage.fs import Storage, join, write_json_atomic
from cion_dist.storage.stage_io import input_record, resolve_input

log = logging.getLogger(__name__)
STAGE = "correlate"


def thresholds(cfg, catalog: VideoCatalog, storage: Storage, seed: int = 0) -> dict:
    """r and d: configured values win; the missing ones are calibrated from the corpus (in a Ray task)."""
    out = {"radius": cfg.radius, "link_distance": cfg.link_distance, "calibrated": []}
    if cfg.radius is None or cfg.link_distance is None:
        cal = calibrate_on_sample(catalog, storage, cfg.calibration.sample, seed,
                                  radius_quantile=cfg.calibration.radius_quantile,
                                  link_neighbours=cfg.calibration.link_neighbours, min_tracklet=cfg.min_tracklet)
        if cfg.radius is None:
            out["radius"] = cal.radius
            out["calibrated"].append("radius")
        if cfg.link_distance is None:
            out["link_distance"] = cal.link_distance
            out["calibrated"].append("link_distance")
        out["radius_stats"], out["link_stats"] = cal.radius_stats, cal.link_stats
    return out


def _nodes(catalog: VideoCatalog, group: np.ndarray, groups_per_video: np.ndarray):
    """Level-2 identities as global nodes numbered in video order; returns (node per image, node video, bounds)."""
    node_bounds = np.concatenate([[0], np.cumsum(groups_per_video)]).astype(np.int64)
    rank = catalog.video_rank()
    node_of = np.where(group >= 0, node_bounds[rank] + group, -1)
    node_video = np.repeat(np.arange(len(catalog.videos)), groups_per_video)
    return node_of, node_video, node_bounds


def _level_counts(catalog: VideoCatalog, reason: np.ndarray, node_of: np.ndarray, final) -> dict:
    """Images and identities in/out per level. Removals are final attributions: an image dropped at level 1 and
    reassigned at level 2 counts as kept."""
    level = LEVEL_OF_REASON[reason]
    kept2 = int((node_of >= 0).sum())
    n = catalog.n_images
    return {
        "images_in": n,
        "tracklets_in": int(catalog.tracklets.sum()),
        "videos": len(catalog.videos),
        "level1": {"images_removed": int((level == 1).sum()), "images_out": n - int((level == 1).sum())},
        "level2": {"images_out": kept2, "identities_out": int(node_of.max() + 1) if kept2 else 0,
                   "images_removed": int((level == 2).sum())},
        "level3": {"images_out": int((final.identity >= 0).sum()), "identities_out": final.n_identities,
                   "images_removed": int((LEVEL_OF_REASON[final.reason] == 3).sum())},
        "reasons": {REASONS[i]: int(c) for i, c in enumerate(np.bincount(final.reason, minlength=len(REASONS))) if i},
    }


def quality_table(data: EmbeddingSet, identity: np.ndarray, gt_uri: str, storage: Storage, cfg, d: float) -> dict:
    """CION and baseline labellings scored on the images the ground truth labels."""
    rows, true = load_ground_truth(gt_uri, data.image_id, storage)
    x = data.x[rows]
    n_ids = max(int(len(np.unique(identity[rows][identity[rows] >= 0]))), 1)
    table = {"cion": quality.score(true, identity[rows])}
    if "tracklet" in cfg.baselines:
        table["tracklet"] = quality.score(true, baselines.tracklet_identity(data.video_id[rows], data.tracklet_key[rows]))
    if "dbscan" in cfg.baselines:
        table["dbscan"] = quality.score(true, baselines.dbscan_knn(x, eps=d, min_samples=cfg.min_images, k=2 * cfg.knn_k))
    if "finch" in cfg.baselines:
        labels, level = baselines.finch(x, n_ids)
        table["finch"] = quality.score(true, labels) | {"finch_level": level}
    return {"images_scored": int(len(rows)), "methods": table}


def run(job: Job) -> CorrelateResult:
    cfg = job.correlate
    storage = Storage(job.storage)
    embed_out = resolve_input(cfg.input, job.output, "embed", storage)
    st = StageRun(job, STAGE, cfg, [input_record(embed_out)], storage=storage)
    if (done := st.completed()) is not None:
        return CorrelateResult.from_record(done, skipped=True)
    out = st.out

    t0 = time.time()
    catalog = scan_embeddings(embed_out)
    ensure_ray(job.ray)
    th = thresholds(cfg, catalog, storage, job.seed)
    r, d = float(th["radius"]), float(th["link_distance"])
    log.info("correlate: %d images, %d videos (order from %s), r=%.4f d=%.4f", catalog.n_images,
             len(catalog.videos), catalog.order_source, r, d)
    timings = {"scan_calibrate_s": round(time.time() - t0, 3)}

    with st.tracking(params={"radius": r, "link_distance": d}):
        t = time.time()
        group, reason, video_sums, videos_reused = run_levels12(out, catalog, r, d, cfg.min_tracklet,
                                                                cfg.videos_per_task)
        timings["levels12_s"] = round(time.time() - t, 3)

        t = time.time()
        node_of, node_video, node_bounds = _nodes(catalog, group, np.array([len(s) for s in video_sums]))
        n_nodes = int(node_bounds[-1])
        sums = np.concatenate(video_sums) if n_nodes else np.zeros((0, 1), np.float32)
        del video_sums
        windows = [(0, len(catalog.videos))] if cfg.whole_corpus else plan_windows(len(catalog.videos), cfg.window_videos, cfg.stride_videos)
        src, dst, dist, windows_reused = run_level3_links(out, l2_normalise(sums), node_video, node_bounds, windows, cfg, d)
        tags = [frozenset([v]) for v in node_video.tolist()] if cfg.exclusive_videos else None
        node_label = guarded_merge(sums, src, dst, dist, d, tags) if n_nodes else np.zeros(0, dtype=np.int64)
        ident = merged_identity(node_of, node_label)
        drop = radius_recheck(catalog, storage, ident, node_of, r, cfg.videos_per_task)
        ident[drop] = -1
        reason[drop] = IDENTITY_RADIUS
        final = number_identities(ident, reason, cfg.min_images)
        timings["level3_s"] = round(time.time() - t, 3)

        write_outputs(out, catalog, final.identity, final.reason, cfg.videos_per_task)
        summary = {
            "radius": r, "link_distance": d, "calibrated": th["calibrated"],
            "windows": len(windows), "links": int(len(src)),
            "videos_resumed": videos_reused, "windows_resumed": windows_reused,
            "video_order": catalog.order_source,
            "counts": _level_counts(catalog, final.reason, node_of, final),
            "timings": timings,
        }
        for key in ("radius_stats", "link_stats"):
            if key in th:
                summary[key] = th[key]
        if cfg.ground_truth:
            t = time.time()
            data = load_all(catalog.items(range(len(catalog.videos))), storage)
            qt = quality_table(data, final.identity, cfg.ground_truth, storage, cfg, d)
            write_json_atomic(join(out.uri, "quality.json"), qt, storage)
            log.info("correlate quality:\n%s", quality.format_table(qt["methods"]))
            summary["quality"] = {m: {k: v for k, v in s.items() if k in ("pairwise_f", "bcubed_f", "nmi", "kept_fraction")}
                                  for m, s in qt["methods"].items()}
            timings["quality_s"] = round(time.time() - t, 3)
        c = summary["counts"]
        st.log_metrics({"images_in": c["images_in"], "images_out": c["level3"]["images_out"],
                        "identities_out": c["level3"]["identities_out"], "links": summary["links"]})
        for m, s in summary.get("quality", {}).items():
            st.log_metrics({f"{m}.{k}": v for k, v in s.items()})
        if st.mlrun is not None:
            import mlflow

            mlflow.log_dict(summary, "correlate_summary.json")
        rows = {"images": catalog.n_images, "kept": int((final.identity >= 0).sum()), "identities": final.n_identities}
        record = st.finalize(rows, summary)
    return CorrelateResult.from_record(record)
