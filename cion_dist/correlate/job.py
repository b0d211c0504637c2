"""The correlate stage: embeddings -> identity labels by CION's three denoising levels (``run(job)``).

Flow: read the embed output; calibrate ``r``/``d`` unless set; levels 1-2 as Ray tasks per video; level 3 as Ray
tasks per sliding window over a sharded FAISS index of level-2 identity centroids; one guarded union-find over all
window links on the driver; radius and size checks; one Parquet part per video
(``image_id, identity_id, tracklet_id, video_id, removed_at, reason``); with ground truth, a quality table for CION
and the baselines (``quality.json``); ``_SUCCESS.json`` last.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from cion_dist.config.job import Job
from cion_dist.correlate import baselines, quality
from cion_dist.correlate.calibrate import calibrate
from cion_dist.correlate.denoise import LEVEL_OF_REASON, REASONS, guarded_merge
from cion_dist.correlate.distributed import run_level3_links, run_levels12
from cion_dist.correlate.geometry import group_sums, l2_normalise
from cion_dist.correlate.inputs import EmbeddingSet, load_embeddings, load_ground_truth
from cion_dist.correlate.linking import finalize_identities, plan_windows
from cion_dist.pipeline.result import StageResult
from cion_dist.pipeline.runid import derive_run_id
from cion_dist.raycluster import ensure_ray
from cion_dist.storage.fs import Storage, join, write_json_atomic
from cion_dist.storage.stage_io import StageOutput, dumps_config, input_record, resolve_input
from cion_dist.tracking.mlflow_run import stage_run

log = logging.getLogger(__name__)
STAGE = "correlate"


def thresholds(cfg, data: EmbeddingSet, seed: int = 0) -> dict:
    """r and d: configured values win; the missing ones are calibrated from the corpus."""
    out = {"radius": cfg.radius, "link_distance": cfg.link_distance, "calibrated": []}
    if cfg.radius is None or cfg.link_distance is None:
        cal = calibrate(data.x, data.tracklet_key, data.video_id, radius_quantile=cfg.calibration.radius_quantile,
                        link_neighbours=cfg.calibration.link_neighbours, min_tracklet=cfg.min_tracklet,
                        sample=cfg.calibration.sample, seed=seed)
        if cfg.radius is None:
            out["radius"] = cal.radius
            out["calibrated"].append("radius")
        if cfg.link_distance is None:
            out["link_distance"] = cal.link_distance
            out["calibrated"].append("link_distance")
        out["radius_stats"], out["link_stats"] = cal.radius_stats, cal.link_stats
    return out


def _nodes(data: EmbeddingSet, group: np.ndarray):
    """Level-2 identities as global nodes numbered in video order; returns (node per image, node video, bounds)."""
    n_videos = len(data.videos)
    per_video = np.zeros(n_videos, dtype=np.int64)
    ok = group >= 0
    np.maximum.at(per_video, data.video_rank[ok], group[ok] + 1)
    node_bounds = np.concatenate([[0], np.cumsum(per_video)])
    node_of = np.where(ok, node_bounds[data.video_rank] + group, -1)
    node_video = np.repeat(np.arange(n_videos), per_video)
    return node_of, node_video, node_bounds


def _level_counts(data: EmbeddingSet, reason: np.ndarray, node_of: np.ndarray, final) -> dict:
    """Images and identities in/out per level. Removals are final attributions: an image dropped at level 1 and
    reassigned at level 2 counts as kept."""
    level = LEVEL_OF_REASON[reason]
    kept2 = int((node_of >= 0).sum())
    return {
        "images_in": len(data),
        "tracklets_in": int(len(np.unique(data.tracklet_key))),
        "videos": len(data.videos),
        "level1": {"images_removed": int((level == 1).sum()), "images_out": len(data) - int((level == 1).sum())},
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


def _write_parts(out: StageOutput, data: EmbeddingSet, identity: np.ndarray, reason: np.ndarray) -> None:
    bounds = np.searchsorted(data.video_rank, np.arange(len(data.videos) + 1))
    reason_names = np.array(REASONS, dtype=object)
    for vi, video in enumerate(data.videos):
        if out.has_unit(video):
            continue
        lo, hi = bounds[vi], bounds[vi + 1]
        rs = reason[lo:hi]
        table = pa.table({
            "image_id": pa.array(data.image_id[lo:hi], pa.string()),
            "identity_id": pa.array(identity[lo:hi], pa.int64()),
            "tracklet_id": data.tracklet_id[lo:hi],
            "video_id": pa.array(data.video_id[lo:hi], pa.string()),
            "removed_at": pa.array(LEVEL_OF_REASON[rs], pa.int8()),
            "reason": pa.array(np.where(rs > 0, reason_names[rs], None), pa.string()),
        })
        out.write_unit(video, table)


def run(job: Job) -> StageResult:
    cfg = job.correlate
    storage = Storage(job.storage)
    embed_out = resolve_input(cfg.input, job.output, "embed", storage)
    inputs = [input_record(embed_out)]
    run_id = derive_run_id(STAGE, cfg, inputs[0].get("digest"), job.run_id)
    out = StageOutput.create(job.output, STAGE, run_id, storage)
    if out.is_complete():
        return StageResult.from_record(STAGE, out.uri, out.success())

    t0 = time.time()
    data = load_embeddings(embed_out)
    th = thresholds(cfg, data, job.seed)
    r, d = float(th["radius"]), float(th["link_distance"])
    log.info("correlate: %d images, %d videos, r=%.4f d=%.4f", len(data), len(data.videos), r, d)
    timings = {"load_calibrate_s": round(time.time() - t0, 3)}

    with stage_run(job, STAGE, params={"correlate": dumps_config(cfg), "radius": r, "link_distance": d},
                   inputs=tuple(inputs)) as mlrun:
        ensure_ray(job.ray)
        t = time.time()
        group, reason, videos_reused = run_levels12(out, data, r, d, cfg.min_tracklet, cfg.videos_per_task)
        timings["levels12_s"] = round(time.time() - t, 3)

        t = time.time()
        node_of, node_video, node_bounds = _nodes(data, group)
        n_nodes = int(node_bounds[-1])
        sums = group_sums(data.x, node_of, n_nodes)
        windows = [(0, len(data.videos))] if cfg.whole_corpus else plan_windows(len(data.videos), cfg.window_videos, cfg.stride_videos)
        src, dst, dist, windows_reused = run_level3_links(out, l2_normalise(sums), node_video, node_bounds, windows, cfg, d)
        tags = [frozenset([v]) for v in node_video.tolist()] if cfg.exclusive_videos else None
        node_label = guarded_merge(sums, src, dst, dist, d, tags) if n_nodes else np.zeros(0, dtype=np.int64)
        final = finalize_identities(data.x, node_of, node_label, reason, r, cfg.min_images)
        timings["level3_s"] = round(time.time() - t, 3)

        _write_parts(out, data, final.identity, final.reason)
        summary = {
            "radius": r, "link_distance": d, "calibrated": th["calibrated"],
            "windows": len(windows), "links": int(len(src)),
            "videos_resumed": videos_reused, "windows_resumed": windows_reused,
            "counts": _level_counts(data, final.reason, node_of, final),
            "timings": timings,
        }
        for key in ("radius_stats", "link_stats"):
            if key in th:
                summary[key] = th[key]
        if cfg.ground_truth:
            t = time.time()
            qt = quality_table(data, final.identity, cfg.ground_truth, storage, cfg, d)
            write_json_atomic(join(out.uri, "quality.json"), qt, storage)
            print(quality.format_table(qt["methods"]))
            summary["quality"] = {m: {k: v for k, v in s.items() if k in ("pairwise_f", "bcubed_f", "nmi", "kept_fraction")}
                                  for m, s in qt["methods"].items()}
            timings["quality_s"] = round(time.time() - t, 3)
        if mlrun is not None:
            import mlflow

            c = summary["counts"]
            mlflow.log_metrics({"images_in": c["images_in"], "images_out": c["level3"]["images_out"],
                                "identities_out": c["level3"]["identities_out"], "links": summary["links"]})
            for m, s in summary.get("quality", {}).items():
                mlflow.log_metrics({f"{m}.{k}": float(v) for k, v in s.items()})
            mlflow.log_dict(summary, "correlate_summary.json")
            summary["mlflow_run_id"] = mlrun.info.run_id
        rows = {"images": len(data), "kept": int((final.identity >= 0).sum()), "identities": final.n_identities}
        record = out.finalize(stage=STAGE, rows=rows, inputs=inputs, config=dumps_config(cfg), summary=summary)
        if mlrun is not None:
            from cion_dist.tracking.lineage import log_output

            log_output(out.uri, record["digest"])
    return StageResult(STAGE, out.uri, rows=rows, summary=summary, mlflow_run_id=summary.get("mlflow_run_id"))
