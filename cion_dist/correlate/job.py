"""The correlate stage: embeddings -> identity labels by CION's three denoising levels (``run(job)``).

Flow: catalogue the embed output (videos, their order and parts; no vectors), in tasks; calibrate ``r``/``d``
unless set (saved as a unit); levels 1-2 as Ray tasks per group of videos, each reading its own vectors and
writing per-video units; the level-2 identity sums gathered into block files; level 3 as Ray tasks per batch of
sliding windows (or query batches over a striped, sharded FAISS index in whole-corpus mode), each writing one
links file; one guarded union-find over the sorted link table in a task; the radius re-check of identities merged
across videos as tasks; the size check; one Parquet part per video written by tasks
(``image_id, identity_id, tracklet_id, video_id, removed_at, reason``); with ground truth, a quality table for CION
and the baselines (``quality.json``, which reads the whole corpus on the driver); ``_SUCCESS.json`` last.

The driver holds integer arrays only, about 30 bytes per image at rest (level-2 group and node, reason, identity;
about 100 at its measured peak, with the buffers of the steps that build them) and 12 per level-2 identity, plus
the compact catalogue; identity vectors stay in block files and the tasks reading them
(see ``distributed``), so its memory does not grow with the embedding width. Every step resumes from one listing
of its folder.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from cion_dist.config.job import Job
from cion_dist.correlate import baselines, quality
from cion_dist.correlate.catalog import VideoCatalog, load_all, scan_embeddings
from cion_dist.correlate.denoise import IDENTITY_RADIUS, LEVEL_OF_REASON, REASONS
from cion_dist.correlate.distributed import (
    accepted_links,
    calibrate_on_sample,
    merged_link_count,
    radius_recheck,
    run_level3_links,
    run_levels12,
    run_merge,
    save_calibration,
    saved_calibration,
    write_blocks,
    write_outputs,
)
from cion_dist.correlate.inputs import EmbeddingSet, load_ground_truth
from cion_dist.correlate.linking import merged_identity, number_identities, plan_windows
from cion_dist.correlate.merge_audit import audit_merges, final_identity_of_labels, format_audit
from cion_dist.raycluster import ensure_ray
from cion_dist.stage import CorrelateResult, StageRun, locked_stage
from cion_dist.storage.fs import Storage, join, write_json_atomic
from cion_dist.storage.stage_io import StageOutput, input_record, resolve_input

log = logging.getLogger(__name__)
STAGE = "correlate"


def thresholds(cfg, catalog: VideoCatalog, storage: Storage, seed: int = 0, out: Optional[StageOutput] = None) -> dict:
    """r and d: configured values win; the missing ones are calibrated from the corpus (in a Ray task). With
    ``out``, the calibration is a unit of the run (``calibration.json``): a rerun reads it instead of redoing it."""
    out_rec = {"radius": cfg.radius, "link_distance": cfg.link_distance, "calibrated": []}
    if cfg.radius is None or cfg.link_distance is None:
        saved = saved_calibration(out) if out is not None else None
        if saved is None:
            cal = calibrate_on_sample(
                catalog,
                storage,
                cfg.calibration.sample,
                seed,
                radius_quantile=cfg.calibration.radius_quantile,
                link_neighbours=cfg.calibration.link_neighbours,
                min_tracklet=cfg.min_tracklet,
            )
            saved = {
                "radius": cal.radius,
                "link_distance": cal.link_distance,
                "radius_stats": cal.radius_stats,
                "link_stats": cal.link_stats,
                "sample": cfg.calibration.sample,
                "seed": seed,
            }
            if out is not None:
                save_calibration(out, saved)
        if cfg.radius is None:
            out_rec["radius"] = saved["radius"]
            out_rec["calibrated"].append("radius")
        if cfg.link_distance is None:
            out_rec["link_distance"] = saved["link_distance"]
            out_rec["calibrated"].append("link_distance")
        out_rec["radius_stats"], out_rec["link_stats"] = saved["radius_stats"], saved["link_stats"]
    return out_rec


def _nodes(catalog: VideoCatalog, group: np.ndarray, groups_per_video: np.ndarray):
    """Level-2 identities as global nodes numbered in video order; returns (node per image, node video, bounds):
    an int64 per image and an int32 per identity."""
    node_bounds = np.concatenate([[0], np.cumsum(groups_per_video)]).astype(np.int64)
    node_of = np.repeat(node_bounds[:-1], catalog.images)
    node_of += group
    node_of[group < 0] = -1
    node_video = np.repeat(np.arange(len(catalog.videos), dtype=np.int32), groups_per_video)
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
        "level2": {
            "images_out": kept2,
            "identities_out": int(node_of.max() + 1) if kept2 else 0,
            "images_removed": int((level == 2).sum()),
        },
        "level3": {
            "images_out": int((final.identity >= 0).sum()),
            "identities_out": final.n_identities,
            "images_removed": int((LEVEL_OF_REASON[final.reason] == 3).sum()),
        },
        "reasons": {REASONS[i]: int(c) for i, c in enumerate(np.bincount(final.reason, minlength=len(REASONS))) if i},
    }


def quality_table(data: EmbeddingSet, identity: np.ndarray, gt_uri: str, storage: Storage, cfg, d: float) -> dict:
    """CION and baseline labellings scored on the images the ground truth labels."""
    rows, true = load_ground_truth(gt_uri, data.image_id, storage)
    x = data.x[rows]
    n_ids = max(int(len(np.unique(identity[rows][identity[rows] >= 0]))), 1)
    table = {"cion": quality.score(true, identity[rows])}
    if "tracklet" in cfg.baselines:
        table["tracklet"] = quality.score(
            true, baselines.tracklet_identity(data.video_id[rows], data.tracklet_key[rows])
        )
    if "dbscan" in cfg.baselines:
        table["dbscan"] = quality.score(
            true, baselines.dbscan_knn(x, eps=d, min_samples=cfg.min_images, k=2 * cfg.knn_k)
        )
    if "finch" in cfg.baselines:
        labels, level = baselines.finch(x, n_ids)
        table["finch"] = quality.score(true, labels) | {"finch_level": level}
    return {"images_scored": int(len(rows)), "methods": table}


def summary_notes(summary: dict) -> list[str]:
    """Sentences that explain figures of the summary a reader would otherwise take for mistakes."""
    notes = []
    c = summary["counts"]
    if c["level2"]["identities_out"] > c["tracklets_in"]:
        notes.append(
            f"level 2 has {c['level2']['identities_out']} identities from {c['tracklets_in']} tracklets: "
            "tracklets that mixed people were split (images moved to the tracklet they fit), which adds "
            "identities before level 3 merges them across videos"
        )
    if "radius" in summary.get("calibrated", []) and (summary.get("radius_stats") or {}).get("capped_at_link_distance"):
        notes.append(
            f"r was capped at d = {summary['link_distance']:.4f}: the radius quantile "
            f"({summary['radius_stats']['quantile']:.4f}) lay beyond the distance that links two identities, "
            "and an identity wider than d would absorb its neighbours"
        )
    return notes


def write_plots(out: StageOutput, catalog: VideoCatalog, final, summary: dict, to_mlflow: bool) -> list[str]:
    """Identity statistics and calibration figures as PNGs under ``<run>/plots/`` (and MLflow artifacts)."""
    from cion_dist.correlate.plots import correlate_figures
    from cion_dist.stage.skeleton import write_figures

    figures = correlate_figures(final.identity, catalog.video_rank(), final.reason, summary)
    return write_figures(out, figures, to_mlflow)


@locked_stage(STAGE)
def run(job: Job) -> CorrelateResult:
    cfg = job.correlate
    storage = Storage(job.storage)
    embed_out = resolve_input(cfg.input, job.output, "embed", storage)
    st = StageRun(job, STAGE, cfg, [input_record(embed_out)], storage=storage)
    if (done := st.completed()) is not None:
        return CorrelateResult.from_record(done, skipped=True)
    out = st.out

    t0 = time.time()
    ensure_ray(job.ray)
    catalog = scan_embeddings(embed_out, in_flight=cfg.tasks_in_flight)
    th = thresholds(cfg, catalog, storage, job.seed, out)
    r, d = float(th["radius"]), float(th["link_distance"])
    log.info(
        "correlate: %d images, %d videos (order from %s), r=%.4f d=%.4f",
        catalog.n_images,
        len(catalog.videos),
        catalog.order_source,
        r,
        d,
    )
    timings = {"scan_calibrate_s": round(time.time() - t0, 3)}

    with st.tracking(params={"radius": r, "link_distance": d}):
        t = time.time()
        group, reason, groups_per_video, videos_reused, cuts = run_levels12(
            out, catalog, r, d, cfg.min_tracklet, cfg.videos_per_task, cfg.tasks_in_flight, cfg.switch_split.spec()
        )
        timings["levels12_s"] = round(time.time() - t, 3)
        log.info(
            "correlate levels 1-2: %d videos (%d resumed) in %.1f s",
            len(catalog.videos),
            videos_reused,
            time.time() - t,
        )

        t = time.time()
        node_of, node_video, node_bounds = _nodes(catalog, group, groups_per_video)
        del group
        n_nodes = int(node_bounds[-1])
        blocks = write_blocks(out, catalog, node_bounds, cfg.block_videos, cfg.tasks_in_flight)
        windows = (
            [(0, len(catalog.videos))]
            if cfg.whole_corpus
            else plan_windows(len(catalog.videos), cfg.window_videos, cfg.stride_videos)
        )
        log.info("correlate level 3: %d identities in %d blocks, %d windows", n_nodes, len(blocks), len(windows))
        n_link_files, link_files_reused, windows_reused = run_level3_links(
            out, blocks, node_video, node_bounds, windows, cfg, d
        )
        node_label = (
            run_merge(out, blocks, node_video, d, cfg.exclusive_videos, link_files_reused < n_link_files)
            if n_nodes
            else np.zeros(0, dtype=np.int64)
        )
        n_links = merged_link_count(out)
        log.info("correlate merge: %d links accepted; radius re-check next", n_links)
        ident = merged_identity(node_of, node_label)
        drop, recheck_reused = radius_recheck(out, catalog, ident, node_of, r, cfg.videos_per_task, cfg.tasks_in_flight)
        ident[drop] = -1
        reason[drop] = IDENTITY_RADIUS
        final = number_identities(ident, reason, cfg.min_images)
        del ident
        timings["level3_s"] = round(time.time() - t, 3)
        log.info("correlate: %d identities; writing the labelled output", final.n_identities)

        write_outputs(out, catalog, final.identity, final.reason, cfg.videos_per_task)
        acc_src, acc_dist, acc_linkage = accepted_links(out)
        audit = audit_merges(
            node_label,
            node_video,
            acc_src,
            acc_dist,
            acc_linkage,
            d,
            final_identity_of_labels(node_label, node_of, final.identity),
        )
        del node_label
        log.info("%s", format_audit(audit))
        summary = {
            "radius": r,
            "link_distance": d,
            "calibrated": th["calibrated"],
            "windows": len(windows),
            "links": n_links,
            "link_files": n_link_files,
            "videos_resumed": videos_reused,
            "windows_resumed": windows_reused,
            "link_files_resumed": link_files_reused,
            "recheck_resumed": recheck_reused,
            "video_order": catalog.order_source,
            "counts": _level_counts(catalog, final.reason, node_of, final),
            "timings": timings,
            "merge_audit": audit,
            "switch_cuts": int(cuts.sum()),  # tracklets cut where their appearance switches (level 1)
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
            summary["quality"] = {
                m: {k: v for k, v in s.items() if k in ("pairwise_f", "bcubed_f", "nmi", "kept_fraction")}
                for m, s in qt["methods"].items()
            }
            timings["quality_s"] = round(time.time() - t, 3)
        c = summary["counts"]
        st.log_metrics(
            {
                "images_in": c["images_in"],
                "images_out": c["level3"]["images_out"],
                "identities_out": c["level3"]["identities_out"],
                "links": summary["links"],
                "identities_multi_video": audit["identities_multi_video"],
            }
        )
        for m, s in summary.get("quality", {}).items():
            st.log_metrics({f"{m}.{k}": v for k, v in s.items()})
        summary["notes"] = summary_notes(summary)
        summary["plots"] = write_plots(out, catalog, final, summary, st.mlrun is not None)
        if st.mlrun is not None:
            import mlflow

            mlflow.log_dict(summary, "correlate_summary.json")
        rows = {"images": catalog.n_images, "kept": int((final.identity >= 0).sum()), "identities": final.n_identities}
        record = st.finalize(rows, summary)
    return CorrelateResult.from_record(record)
