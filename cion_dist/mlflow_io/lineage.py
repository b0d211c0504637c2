"""Lineage in MLflow: what each stage run read and wrote, and the walk back from a model to the source videos.

Each stage run carries its inputs twice: as tags ``cion.input.<i>.{uri,digest,stage,mlflow_run_id}`` (written by
``stage_run``) and as MLflow dataset inputs (``mlflow.log_input``) whose digest is the stage output's own content
digest, not MLflow's sample-based one. Outputs are tags ``cion.output.uri`` / ``cion.output.digest``.
``lineage_chain`` follows ``mlflow_run_id`` links from a registered model version to the runs upstream of it
until it reaches data no run produced (the video manifest).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from typing import Any, Optional

from cion_dist.errors import DataError
from cion_dist.redact import redact_text

INPUT_PREFIX = "cion.input"
OUTPUT_URI = "cion.output.uri"
OUTPUT_DIGEST = "cion.output.digest"
_INPUT_TAG = re.compile(r"^cion\.input\.(\d+)\.(uri|digest|stage|mlflow_run_id)$")
_MLFLOW_DIGEST_LEN = 32  # MLflow keeps at most 36 characters of a dataset digest; the full one goes in a tag


def _source(uri: str):
    """A dataset source for a URI: MLflow's own for local paths and s3://, a plain URI source otherwise."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if uri.startswith(("s3://", "/", "file://")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return resolve_dataset_source(uri)
            except Exception:  # noqa: BLE001 - fall through to the plain source
                pass
    return HTTPDatasetSource(uri)  # records the URI verbatim; never fetched


def log_inputs(inputs, run_id: Optional[str] = None) -> int:
    """Log each input record (``{"uri", "digest", "stage", "mlflow_run_id"}``) as an MLflow dataset input."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    n = 0
    entries = []
    for i, rec in enumerate(inputs):
        raw = str(rec.get("uri") or "")
        if not raw:
            continue
        uri = redact_text(raw)  # what MLflow keeps is never a secret (URL credentials, signed query strings)
        content = str(rec.get("digest") or "")
        # without a content digest MLflow still needs an identifier: the URI's hash, never tagged as content
        digest = content or hashlib.sha256(raw.encode()).hexdigest()
        stage = str(rec.get("stage") or "input")
        name = f"{stage}:{uri.rstrip('/').rsplit('/', 1)[-1]}"[:200]
        ds = MetaDataset(source=_source(uri), name=name, digest=digest[:_MLFLOW_DIGEST_LEN])
        tags = [InputTag("mlflow.data.context", stage), InputTag("cion.index", str(i))]
        if content:
            tags.append(InputTag("cion.digest", content))
        if rec.get("mlflow_run_id"):
            tags.append(InputTag("cion.mlflow_run_id", str(rec["mlflow_run_id"])))
        entries.append(DatasetInput(ds._to_mlflow_entity(), tags=tags))
        n += 1
    if entries:
        rid = run_id or mlflow.active_run().info.run_id
        mlflow.MlflowClient().log_inputs(rid, datasets=entries)
    return n


def log_output(uri: str, digest: Optional[str] = None, run_id: Optional[str] = None) -> None:
    """Record what a stage run wrote (its output URI and content digest) on its MLflow run."""
    import mlflow

    rid = run_id or (mlflow.active_run().info.run_id if mlflow.active_run() else None)
    if rid is None:
        return
    c = mlflow.MlflowClient()
    c.set_tag(rid, OUTPUT_URI, redact_text(uri))
    if digest:
        c.set_tag(rid, OUTPUT_DIGEST, str(digest))


def input_tags(tags: dict) -> list[dict]:
    """The input records of a run, from its ``cion.input.<i>.*`` tags, in index order."""
    by_index: dict[int, dict] = {}
    for k, v in tags.items():
        m = _INPUT_TAG.match(k)
        if m:
            by_index.setdefault(int(m.group(1)), {})[m.group(2)] = v
    return [by_index[i] for i in sorted(by_index)]


def lineage_chain(model_uri: str, tracking_uri: Optional[str] = None) -> list[dict[str, Any]]:
    """Walk from ``models:/name/<version|@alias>`` (or ``runs:/<id>``) up to the raw inputs.

    Returns nodes in depth-first order, each with ``kind`` (``model_version``, ``run``, ``data``), ``depth`` and
    its details; a run reached twice is listed once.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from cion_dist.mlflow_io.registry import get_version

    c = MlflowClient(tracking_uri=tracking_uri) if tracking_uri else MlflowClient()
    chain: list[dict[str, Any]] = []
    if model_uri.startswith("models:/"):
        mv = get_version(model_uri, c)
        aliases = list(getattr(mv, "aliases", []) or [])
        chain.append(
            {
                "kind": "model_version",
                "depth": 0,
                "name": mv.name,
                "version": str(mv.version),
                "aliases": aliases,
                "run_id": mv.run_id,
                "source": mv.source,
                "uri": f"models:/{mv.name}/{mv.version}",
            }
        )
        start = mv.run_id
        if not start:
            return chain
    elif model_uri.startswith("runs:/"):
        start = model_uri[len("runs:/") :].split("/", 1)[0]
    else:
        raise DataError(f"lineage needs models:/name/<version>, models:/name@alias or runs:/<id>, got {model_uri!r}")

    seen: set[str] = set()

    def visit(run_id: str, depth: int, via: Optional[dict] = None) -> None:
        if run_id in seen:
            return
        seen.add(run_id)
        try:
            run = c.get_run(run_id)
        except MlflowException:
            chain.append(
                {"kind": "missing_run", "depth": depth, "run_id": run_id, **({"uri": via.get("uri")} if via else {})}
            )
            return
        tags = run.data.tags
        inputs = input_tags(tags)
        datasets = [
            {"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source}
            for d in (run.inputs.dataset_inputs if run.inputs else [])
        ]
        chain.append(
            {
                "kind": "run",
                "depth": depth,
                "run_id": run_id,
                "stage": tags.get("cion.stage", "?"),
                "run_name": run.info.run_name,
                "status": run.info.status,
                "output_uri": tags.get(OUTPUT_URI),
                "output_digest": tags.get(OUTPUT_DIGEST),
                "inputs": inputs,
                "datasets": datasets,
            }
        )
        for rec in inputs:
            parent = rec.get("mlflow_run_id")
            if parent:
                visit(parent, depth + 1, rec)
            else:
                chain.append(
                    {
                        "kind": "data",
                        "depth": depth + 1,
                        "stage": rec.get("stage", "input"),
                        "uri": rec.get("uri"),
                        "digest": rec.get("digest"),
                    }
                )

    visit(start, 1 if chain else 0)
    return chain


def _short(d: Optional[str], n: int = 12) -> str:
    return (d or "-")[:n]


def format_chain(chain: list[dict[str, Any]]) -> str:
    """One line per node, indented by depth: model version, the runs behind it, and the data they read."""
    lines = []
    for node in chain:
        pad = "  " * node.get("depth", 0)
        kind = node["kind"]
        if kind == "model_version":
            aliases = f" [{', '.join(node['aliases'])}]" if node.get("aliases") else ""
            lines.append(f"{pad}{node['uri']}{aliases}  <- run {node.get('run_id') or '-'}")
        elif kind == "run":
            out = (
                f"  -> {node['output_uri']} (digest {_short(node.get('output_digest'))})"
                if node.get("output_uri")
                else ""
            )
            lines.append(f"{pad}{node['stage']} run {node['run_id']} ({node['status']}){out}")
        elif kind == "data":
            lines.append(f"{pad}{node['stage']} data {node.get('uri')} (digest {_short(node.get('digest'))})")
        else:
            lines.append(f"{pad}missing run {node['run_id']} ({node.get('uri') or 'no uri'})")
    return "\n".join(lines)
