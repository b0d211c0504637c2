"""Stage drivers at growing corpus sizes: requests the driver sends to S3, its peak memory, and wall time.

Every figure is counted at a loopback S3 server (moto) that tells the stage driver's requests from the Ray
workers' by the User-Agent tag the storage layer sets (``cion/driver`` / ``cion/worker``). For each size N:

- ingest: a manifest of N clips with N real one-crop parts already written (and reported), then
  ``resume``: the stage run with every part present but no ``_SUCCESS.json`` (a run killed at the very end);
  ``plan+1%``: the same with 1% of the parts gone (their clips point at missing videos, so Ray tasks run and
  come back fast as error rows); ``rerun``: the complete stage run again.
- embed: the same ingest output embedded (handcrafted descriptor on tiny crops), ``fresh``: the whole stage from
  nothing at sizes up to --embed-max; ``resume``: every unit present, no ``_SUCCESS.json``; ``plan+10%``: 10% of the
  units gone and embedded again.

Each run is a fresh Python process (peak RSS from ``VmHWM``, and above the RSS after imports for ``+MB``). The
server also times its answers to the driver: moto scans and sorts every key of the bucket for each listing page
(about a second a page at 1e5 keys, where S3 takes tens of milliseconds), so ``own`` (the wall less that time) is
the driver's part, and ``at 50 ms a request`` adds back what S3 would cost at the upper end of its latency. The
code before this change (``--old-rev``, extracted with ``git archive``) runs the same scenarios up to --old-max
clips, beside; its requests are all untagged (driver and workers together; its scenarios start no more than 1%
of clips as tasks). Growth exponents are fitted over the sizes (log-log least squares).

    python benchmarks/scale_stages.py [--sizes 1000,10000,100000] [--old-max 10000] [--correlate]

``--correlate`` adds ``benchmarks/scale_correlate.py``'s table when that script is present.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# a request's latency on S3 from within its region, upper end (20-50 ms): what the driver's own time is projected with
S3_LATENCY_S = 0.05
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


# ---------------------------------------------------------------- child: one stage run in its own process


def child(spec: dict) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    if spec.get("ray"):
        import ray

        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    from cion_dist.config import job_from_dict

    mod = __import__(f"cion_dist.{spec['stage']}.job", fromlist=["run"])
    job = job_from_dict(spec["job"])
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    err = ""
    try:
        res = mod.run(job)
        rows, skipped = res.rows, res.skipped
    except Exception as e:  # noqa: BLE001 - reported as a figure
        rows, skipped, err = {}, False, f"{type(e).__name__}: {e}"[:300]
    wall = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    print(
        "RESULT "
        + json.dumps({"wall": wall, "peak_mb": peak, "base_mb": base, "rows": rows, "skipped": skipped, "error": err})
    )


def _status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process in MB. Not ``ru_maxrss``: that keeps the forking parent's peak across exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_child(spec: dict, counter, pythonpath: str) -> dict:
    counter.reset()
    env = dict(os.environ, PYTHONPATH=pythonpath, RAY_DEDUP_LOGS="0")
    # cwd is the code's own tree: Ray workers put the driver's working directory on their path
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        env=env,
        cwd=pythonpath,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"child failed: {p.stderr[-3000:]}")
    out = json.loads(line[-1][7:])
    time.sleep(0.5)  # late requests (Ray teardown) land before the count is read
    out["driver_requests"] = counter.total("driver")
    out["driver_server_s"] = counter.server_seconds("driver")
    # the driver's own time: its requests are serial, so the server's time on them is off its wall
    out["own_s"] = max(0.0, out["wall"] - out["driver_server_s"])
    out["worker_requests"] = counter.total("worker")
    out["untagged_requests"] = counter.total("other")
    out["driver_ops"] = counter.by_op("driver") or counter.by_op("other")
    return out


# ---------------------------------------------------------------- setup: real parts on the loopback server


def tiny_jpeg() -> bytes:
    from cion_dist.images import encode_jpeg

    rng = np.random.default_rng(0)
    return encode_jpeg(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8))


def crop_table(video_id: str, jpeg: bytes):
    import pyarrow as pa

    from cion_dist.ingest.schema import CROPS

    return pa.table(
        {
            "image_id": [f"{video_id}-t0-f0"],
            "video_id": [video_id],
            "tracklet_id": [f"{video_id}-t0"],
            "frame_index": [0],
            "timestamp_s": [0.0],
            "bbox": [[0.0, 0.0, 8.0, 16.0]],
            "score": [1.0],
            "jpeg": [jpeg],
        },
        schema=CROPS,
    )


def setup_ingest(root: str, n: int, run_id: str, link: bool = False) -> dict:
    """Manifest of n clips (videos that do not exist) and n written, reported one-crop parts (``link``: on a local
    folder, one part written and hard-linked n - 1 times)."""
    import pyarrow as pa

    from cion_dist.storage.fs import Storage
    from cion_dist.storage.reports import part_record
    from cion_dist.storage.stage_io import StageOutput, unit_filename, write_table_atomic

    st = Storage()
    ids = [f"v{i:07d}" for i in range(n)]
    manifest = f"{root}/manifest.parquet"
    write_table_atomic(
        manifest,
        pa.table(
            {
                "video_id": ids,
                "uri": [f"{root}/clips/{v}.mp4" for v in ids],
                "source": ["cam"] * n,
                "start_time": [0.0] * n,
            }
        ),
        st,
    )
    out = StageOutput.create(root, "ingest", run_id, st)
    jpeg = tiny_jpeg()

    def put(v):
        return part_record(unit_filename(v), out.write_unit(v, crop_table(v, jpeg)), crops=1, tracklets=1)

    if link and not root.startswith("s3://"):
        # one real part, hard-linked under every other name: a resume only lists the parts (a link has its
        # target's size and mtime, so the listing fingerprint its report names), and 1e6 links take seconds
        recs = []
        for i, v in enumerate(ids):
            if i % 60000 == 0:  # a new source before a filesystem's link limit (ext4: 65,000)
                first = put(v)
                src = os.path.join(out.uri, first["name"])
                recs.append(first)
                continue
            os.link(src, os.path.join(out.uri, unit_filename(v)))
            recs.append({**first, "name": unit_filename(v)})
    else:
        with ThreadPoolExecutor(16) as pool:
            recs = list(pool.map(put, ids))
    w = out.report_writer(flush_rows=5000, flush_seconds=1e9)
    for i in range(0, len(recs), 1000):  # as a run reports: batches of results, a report file per 5,000 rows
        w.add(recs[i : i + 1000])
    w.flush()
    out.write_unit(
        "errors",
        pa.table(
            {
                "video_id": pa.array([], pa.string()),
                "uri": pa.array([], pa.string()),
                "reason": pa.array([], pa.string()),
            }
        ),
        subdir="errors",
    )
    return {"manifest": manifest, "ids": ids, "out": out}


def remove(uris: list[str]) -> None:
    from cion_dist.storage.fs import Storage

    fs, _ = Storage().fs(uris[0])
    paths = [Storage().fs(u)[1] for u in uris]
    for i in range(0, len(paths), 1000):
        fs.rm(paths[i : i + 1000])


def fit_exponent(ns, ys) -> float:
    ns, ys = np.asarray(ns, float), np.maximum(np.asarray(ys, float), 1e-9)
    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns), np.log(ys), 1)[0])


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--old-max", type=int, default=10000, help="largest size the code before runs at")
    ap.add_argument("--old-rev", default="1b98bbf", help="git revision of the code before")
    ap.add_argument("--embed-max", type=int, default=10000, help="largest size embedded from nothing")
    ap.add_argument("--correlate", action="store_true", help="add benchmarks/scale_correlate.py's figures")
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="local folders, only the scenarios without Ray (resume, rerun): driver memory at larger N",
    )
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    from s3_counter import counting_s3_server

    sizes = [int(s) for s in args.sizes.split(",")]
    if args.memory_only:
        memory_only(sizes)
        return
    old_tree = tempfile.mkdtemp(prefix="cion-old-")
    subprocess.run(f"git -C {ROOT} archive {args.old_rev} cion_dist | tar -x -C {old_tree}", shell=True, check=True)
    new_path = str(ROOT)
    rows = []
    with counting_s3_server() as (endpoint, counter):
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        for n in sizes:
            bucket = f"scale-{n}"
            fs.mkdir(bucket)
            root = f"s3://{bucket}/cion"
            t0 = time.perf_counter()
            ing = setup_ingest(root, n, "ingest-scale")
            print(f"[{n}] setup: {n} ingest parts written in {time.perf_counter() - t0:.0f} s", flush=True)
            common = {"output": root, "mlflow": {"enabled": False}}
            ingest_job = {
                **common,
                "stage": "ingest",
                "run_id": "ingest-scale",
                "ingest": {"manifest": ing["manifest"], "max_error_fraction": 1.0, "concurrency": 2},
            }
            success = ing["out"].success_uri

            def measure(label, stage, job, pythonpath, ray_=False, code="new", n=n):
                r = run_child({"stage": stage, "job": job, "ray": ray_}, counter, pythonpath)
                r.update(n=n, scenario=label, code=code)
                rows.append(r)
                req = r["driver_requests"] if code == "new" else r["untagged_requests"]
                print(
                    f"[{n}] {code:>3} {label:<18} requests {req:>8}  peak {r['peak_mb']:7.0f} MB "
                    f"(+{r['peak_mb'] - r['base_mb']:5.0f})  {r['wall']:7.1f} s (server {r['driver_server_s']:6.1f} s, "
                    f"own {r['own_s']:6.1f} s, at {S3_LATENCY_S * 1e3:.0f} ms a request "
                    f"{r['own_s'] + req * S3_LATENCY_S:6.1f} s)  {r['error'][:80]}",
                    flush=True,
                )
                return r

            # ingest: resume with every part present, then 1% missing, then the complete rerun
            measure("ingest resume", "ingest", ingest_job, new_path)
            measure("ingest rerun", "ingest", ingest_job, new_path)
            if n <= args.old_max:
                remove([success])
                measure("ingest resume", "ingest", ingest_job, old_tree, code="old")
            lost = [ing["out"].unit_uri(v) for v in ing["ids"][::100]]
            remove(lost + [success])
            measure("ingest plan+1%", "ingest", ingest_job, new_path, ray_=True)
            if n <= args.old_max:
                remove(lost + [success])
                measure("ingest plan+1%", "ingest", ingest_job, old_tree, ray_=True, code="old")

            # embed over that ingest output (its missing clips are error rows, its parts all present)
            embed = {"backbone": "handcrafted", "concurrency": 2, "height": 16, "width": 8}
            embed_job = {**common, "stage": "embed", "run_id": "embed-scale", "embed": embed}
            if n <= args.embed_max:
                measure("embed fresh", "embed", embed_job, new_path, ray_=True)
            else:
                from cion_dist.config import job_from_dict
                from cion_dist.storage.stage_io import StageOutput

                cfg = job_from_dict({**embed_job}).embed
                measure_setup_embed(StageOutput.create(root, "embed", "embed-scale"), ing["out"], cfg)
            eo_success = f"{root}/embed/embed-scale/_SUCCESS.json"
            remove([eo_success])
            measure("embed resume", "embed", embed_job, new_path)
            from cion_dist.storage.stage_io import StageOutput

            eo = StageOutput(f"{root}/embed/embed-scale")
            units = eo.files()
            remove(units[::10] + [eo_success])
            measure("embed plan+10%", "embed", embed_job, new_path, ray_=True)
            if n <= args.old_max:
                old_embed = {**embed_job, "run_id": "embed-old", "embed": {k: v for k, v in embed.items()}}
                measure("embed fresh", "embed", old_embed, old_tree, ray_=True, code="old")
                remove([f"{root}/embed/embed-old/_SUCCESS.json"])
                measure("embed resume", "embed", old_embed, old_tree, code="old")
            fs.rm(bucket, recursive=True)

    print_table(rows, sizes)
    if args.correlate:
        path = ROOT / "benchmarks" / "scale_correlate.py"
        if path.exists():
            spec = importlib.util.spec_from_file_location("scale_correlate", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            mod.main([]) if "argv" in mod.main.__code__.co_varnames else mod.main()
        else:
            print("\n(--correlate: benchmarks/scale_correlate.py is not in this tree)")


def memory_only(sizes: list[int]) -> None:
    """Driver peak RSS of the ingest and embed resumes (every part present, no _SUCCESS.json) on local folders."""
    from cion_dist.config import job_from_dict
    from cion_dist.storage.stage_io import StageOutput

    class NoCounter:
        def reset(self):
            pass

        def total(self, role="driver"):
            return 0

        def by_op(self, role="driver"):
            return {}

        def server_seconds(self, role="driver"):
            return 0.0

    rows = []
    for n in sizes:
        root = tempfile.mkdtemp(prefix=f"scale-{n}-")
        t0 = time.perf_counter()
        ing = setup_ingest(root, n, "ingest-scale", link=True)
        print(f"[{n}] setup: {n} ingest parts in {time.perf_counter() - t0:.0f} s", flush=True)
        job = {
            "output": root,
            "mlflow": {"enabled": False},
            "stage": "ingest",
            "run_id": "ingest-scale",
            "ingest": {"manifest": ing["manifest"], "max_error_fraction": 1.0},
        }
        r = run_child({"stage": "ingest", "job": job, "ray": False}, NoCounter(), str(ROOT))
        rows.append(("ingest resume", n, r))
        ej = {
            "output": root,
            "mlflow": {"enabled": False},
            "stage": "embed",
            "run_id": "embed-scale",
            "embed": {"backbone": "handcrafted", "height": 16, "width": 8},
        }
        eo = StageOutput.create(root, "embed", "embed-scale")
        measure_setup_embed(eo, ing["out"], job_from_dict(ej).embed)
        remove_local(eo.success_uri)
        r = run_child({"stage": "embed", "job": ej, "ray": False}, NoCounter(), str(ROOT))
        rows.append(("embed resume", n, r))
        for label, m, r in rows[-2:]:
            print(
                f"[{m}] {label:<14} peak {r['peak_mb']:7.1f} MB (after imports {r['base_mb']:6.1f}) "
                f"{r['wall']:6.1f} s {r['error'][:80]}",
                flush=True,
            )
    print("\ndriver peak RSS (VmHWM) on local folders, measured under load")
    for label in ("ingest resume", "embed resume"):
        ns = [n for lb, n, _ in rows if lb == label]
        mb = [r["peak_mb"] for lb, _, r in rows if lb == label]
        above = [r["peak_mb"] - r["base_mb"] for lb, _, r in rows if lb == label]
        cells = " ".join(f"N={n}: {m:.0f} MB (+{a:.0f})" for n, m, a in zip(ns, mb, above))
        print(f"{label:<14} {cells}   exponent {fit_exponent(ns, mb):.3f}")


def remove_local(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def measure_setup_embed(eo, ingest, cfg) -> None:
    """Embed units of the plan written directly (one tiny part each, reported): the resume scenarios' input when
    embedding the whole corpus would take too long on this machine."""
    import pyarrow as pa

    from cion_dist.embed.embedders import build_embedder
    from cion_dist.embed.parts import BACKBONE_KEY, DIM_KEY, embedding_array
    from cion_dist.embed.plan import write_plan
    from cion_dist.images import decode_image
    from cion_dist.storage.fs import Storage
    from cion_dist.storage.reports import part_record
    from cion_dist.storage.stage_io import read_table, unit_filename

    # one real feature of the configured backbone, so units embedded again later (plan+10%) match these in
    # dimension and backbone name
    embedder = build_embedder(cfg)
    vec = embedder([decode_image(tiny_jpeg())]).astype(np.float32)
    meta = {DIM_KEY: str(vec.shape[1]).encode(), BACKBONE_KEY: embedder.name.encode()}
    files, _ = write_plan(ingest, eo, cfg.crops_per_unit, cfg.parts_per_unit)
    recs = []
    for f in files:
        for unit, crops in zip(
            *[read_table(f, Storage(), ["unit", "crops"]).column(c).to_pylist() for c in ("unit", "crops")]
        ):
            t = pa.table({"image_id": [unit], "tracklet_id": ["t"], "video_id": ["v"], "frame_index": [0]})
            t = t.append_column("embedding", embedding_array(vec)).replace_schema_metadata(meta)
            recs.append(
                part_record(unit_filename(unit), eo.write_unit(unit, t), rows=crops, bad=0, dim=int(vec.shape[1]))
            )
    w = eo.report_writer()
    w.add(recs)
    w.flush()
    eo.finalize(stage="embed", rows={"embeddings": int(sum(r["rows"] for r in recs))})


def print_table(rows: list[dict], sizes: list[int]) -> None:
    print("\nstage drivers on loopback S3 (moto), measured under load on this machine")
    head = " ".join(f"{'N=' + str(n):>38}" for n in sizes)
    print(f"{'scenario':<18} {'code':<4} {head}   exponents (req, MB, s)")
    keys = sorted({(r["scenario"], r["code"]) for r in rows}, key=lambda k: (k[0], k[1] != "new"))
    for scen, code in keys:
        rs = {r["n"]: r for r in rows if r["scenario"] == scen and r["code"] == code}
        cells, ns, req, mb, s = [], [], [], [], []
        for n in sizes:
            r = rs.get(n)
            if r is None:
                cells.append(f"{'-':>38}")
                continue
            q = r["driver_requests"] if code == "new" else r["untagged_requests"]
            own = f"({r['own_s']:6.1f} own)" if code == "new" else " " * 12
            cells.append(f"{q:>7} req {r['peak_mb']:5.0f} MB {r['wall']:6.1f} s {own}")
            ns.append(n), req.append(q), mb.append(r["peak_mb"]), s.append(r["wall"])
        exps = f"{fit_exponent(ns, req):5.2f} {fit_exponent(ns, mb):5.2f} {fit_exponent(ns, s):5.2f}"
        print(f"{scen:<18} {code:<4} " + " ".join(cells) + f"   {exps}")
    print(
        "requests: new = the driver's only (tagged cion/driver); old = every request (untagged), its workers ran "
        "only the 1% / 10% of units that were missing. MB: peak RSS of the driver process. own: the wall less the "
        "server's time on the driver's requests (moto lists a page in O(keys in the bucket))."
    )


if __name__ == "__main__":
    main()
