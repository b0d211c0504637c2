"""Backbone I/O: the exported format, every place a backbone can come from, and how it must be fed.

An exported backbone is a folder (``model/`` of the pretrain run and of its MLflow run) with two files:

    backbone.safetensors   # fp32 state_dict of the pooled-feature backbone (no projection head)
    backbone.json          # {"architecture", "embed_dim", "input_size": [h, w], "kwargs", "mean", "std", "format"}

``load_backbone`` rebuilds one from a local path or ``file://`` (the folder, its weights file, its
``backbone.json``, a bare checkpoint, or a stage output folder with the backbone below it), an ``s3://`` URI,
``models:/name/<version|latest>`` or ``models:/name@alias``, ``runs:/<run_id>[/path]``, or ``init:<architecture>``
(a seeded random init, the 'before pretraining' reference). The loaded backbone carries its ``Preprocess`` (input
size and normalisation) as recorded at export, so every consumer feeds a network the way it was trained;
``resolve_preprocess`` lets a setting the user gave explicitly win over it, with a warning when they differ.
``log_backbone`` / ``register_backbone`` put an export in an MLflow run and the model registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import nn

from cion_dist.errors import ConfigError, DataError
from cion_dist.images import IMAGENET_MEAN, IMAGENET_STD
from cion_dist.models.factory import INPUT_SIZE, build_backbone
from cion_dist.storage.fs import Storage, is_s3, join

log = logging.getLogger(__name__)

BACKBONE_DIR = "model"  # artifact folder of a run, and folder of a pretrain output
WEIGHTS_FILE = "backbone.safetensors"
META_FILE = "backbone.json"
FORMAT = "cion-backbone/1"
CHECKPOINT_EXTS = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")

Triple = tuple[float, float, float]


def _triple(values) -> Triple:
    return tuple(round(float(v), 6) for v in values)  # float32 constants would otherwise print as 0.48500001...


# ---------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """What a backbone expects: RGB crops resized to ``input_size`` (height, width), scaled to 0-1, then
    normalised by ``mean`` / ``std``."""

    input_size: tuple[int, int] = INPUT_SIZE
    mean: Triple = _triple(IMAGENET_MEAN)
    std: Triple = _triple(IMAGENET_STD)

    def __post_init__(self):  # one spelling of every value, so equal preprocessing compares equal
        object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))
        object.__setattr__(self, "mean", _triple(self.mean))
        object.__setattr__(self, "std", _triple(self.std))

    @property
    def height(self) -> int:
        return int(self.input_size[0])

    @property
    def width(self) -> int:
        return int(self.input_size[1])

    def feed_kwargs(self) -> dict:
        """``height``, ``width``, ``mean``, ``std``: the keywords every image feeder (extraction, fine-tune) takes."""
        return {"height": self.height, "width": self.width, "mean": self.mean, "std": self.std}

    def to_meta(self) -> dict:
        return {"input_size": [self.height, self.width], "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_meta(cls, meta: dict, where: str) -> Optional["Preprocess"]:
        """The preprocessing a ``backbone.json`` records (missing keys take the defaults); None when it records
        none of them."""
        if not any(meta.get(k) for k in ("input_size", "mean", "std")):
            return None
        try:
            size = meta.get("input_size") or INPUT_SIZE
            out = cls(
                (int(size[0]), int(size[1])),
                _triple(meta.get("mean") or cls.mean),
                _triple(meta.get("std") or cls.std),
            )
        except (TypeError, ValueError, IndexError) as e:
            raise DataError(f"{where}: input_size / mean / std are not numbers ({e})") from e
        if len(out.mean) != 3 or len(out.std) != 3 or min(out.std) <= 0 or min(out.input_size) <= 0:
            raise DataError(f"{where}: mean/std need three values (std > 0) and input_size two positive sizes")
        return out


def resolve_preprocess(
    recorded: Optional[Preprocess],
    fallback: Preprocess,
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
    mean=None,
    std=None,
    where: str = "",
    model: str = "",
) -> Preprocess:
    """The preprocessing to run: each explicitly given value (not None) wins; otherwise what the model recorded;
    otherwise ``fallback`` (the configuration's defaults). An explicit value that contradicts the model's record is
    logged as a warning: the features are then not the ones the model was trained to produce."""
    base = recorded or fallback
    out = Preprocess(
        (int(height if height is not None else base.height), int(width if width is not None else base.width)),
        _triple(mean) if mean is not None else base.mean,
        _triple(std) if std is not None else base.std,
    )
    if recorded is not None:
        diffs = [
            f"{name} {got} (model: {want})"
            for name, got, want in (
                ("input size", out.input_size, recorded.input_size),
                ("mean", out.mean, recorded.mean),
                ("std", out.std, recorded.std),
            )
            if got != want
        ]
        if diffs:
            log.warning("%s: %s set explicitly, not what %s was exported with", where, "; ".join(diffs), model)
    return out


def preprocess_for_config(recorded: Optional[Preprocess], cfg, where: str, model: str = "") -> Preprocess:
    """``resolve_preprocess`` for a stage config with ``height`` / ``width`` (and optionally ``mean`` / ``std``):
    only the fields the user set (pydantic's ``model_fields_set``) count as explicit."""
    given = cfg.model_fields_set

    def explicit(key):
        return getattr(cfg, key, None) if key in given else None

    fallback = Preprocess(
        (cfg.height, cfg.width),
        _triple(getattr(cfg, "mean", None) or Preprocess.mean),
        _triple(getattr(cfg, "std", None) or Preprocess.std),
    )
    return resolve_preprocess(
        recorded,
        fallback,
        height=explicit("height"),
        width=explicit("width"),
        mean=explicit("mean"),
        std=explicit("std"),
        where=where,
        model=model,
    )


# ---------------------------------------------------------------- the description file


@dataclass(frozen=True)
class BackboneMeta:
    """What ``backbone.json`` says: how to rebuild the network and how to feed it (None: not recorded)."""

    architecture: str
    embed_dim: int = 0
    kwargs: dict = field(default_factory=dict)
    preprocess: Optional[Preprocess] = None

    def to_json(self) -> bytes:
        meta = {"architecture": self.architecture, "embed_dim": int(self.embed_dim), "kwargs": self.kwargs}
        meta.update((self.preprocess or Preprocess()).to_meta())
        meta["format"] = FORMAT
        return json.dumps(meta, indent=2).encode()


def read_meta_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    return meta


def meta_for(
    raw: Optional[dict], architecture: Optional[str], where: str, architecture_key: str = "the architecture"
) -> BackboneMeta:
    """The description to build from: ``architecture`` (the user's) wins over the file's; the file's kwargs,
    embed dim and preprocessing only describe its own network, so they are dropped when the names differ."""
    raw = raw or {}
    arch = architecture or raw.get("architecture") or raw.get("arch") or ""
    if not arch:
        raise ConfigError(f"{where}: no {META_FILE} names the architecture; set {architecture_key}")
    if architecture and raw and architecture != (raw.get("architecture") or raw.get("arch")):
        return BackboneMeta(arch)
    return BackboneMeta(
        arch,
        int(raw.get("embed_dim") or 0),
        dict(raw.get("kwargs") or {}),
        Preprocess.from_meta(raw, where),
    )


# ---------------------------------------------------------------- export


def backbone_state(full_state: dict[str, torch.Tensor], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The backbone's tensors of a student/teacher state_dict (``prefix`` stripped; "" keeps all), fp32."""
    out = {
        k[len(prefix) :]: (v.float() if v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in full_state.items()
        if k.startswith(prefix)
    }
    if not out:
        raise DataError(f"no '{prefix}*' tensors in the state_dict to export")
    return out


def export_files(
    state: dict[str, torch.Tensor],
    architecture: str,
    embed_dim: int,
    kwargs: Optional[dict] = None,
    preprocess: Optional[Preprocess] = None,
) -> dict[str, bytes]:
    """File name -> bytes of an exported backbone (weights + ``backbone.json``)."""
    from safetensors.torch import save

    meta = BackboneMeta(architecture, int(embed_dim), dict(kwargs or {}), preprocess or Preprocess())
    return {WEIGHTS_FILE: save(state, metadata={"architecture": architecture}), META_FILE: meta.to_json()}


def export_model(
    model: nn.Module, architecture: str, kwargs: Optional[dict] = None, preprocess: Optional[Preprocess] = None
) -> dict[str, bytes]:
    """``export_files`` of a built backbone module."""
    return export_files(backbone_state(model.state_dict(), ""), architecture, int(model.embed_dim), kwargs, preprocess)


def write_export(files: dict[str, bytes], folder: str, storage: Optional[Storage] = None) -> str:
    """Write an export's files atomically under ``folder`` (local or s3://); returns the folder."""
    from cion_dist.storage.fs import write_bytes_atomic

    for name, data in files.items():
        write_bytes_atomic(join(folder, name), data, storage)
    return folder


# ---------------------------------------------------------------- fetching


@dataclass(frozen=True)
class Fetched:
    """A backbone source made local: ``path`` on this machine, ``uri`` canonical (registered versions by number),
    and the registry / run it came from, when it did."""

    path: str
    uri: str
    name: Optional[str] = None
    version: Optional[str] = None
    run_id: Optional[str] = None


def fetch(
    uri: str,
    storage: Optional[Storage] = None,
    tracking_uri: Optional[str] = None,
    registry_uri: Optional[str] = None,
    where: str = "model",
) -> Fetched:
    """Make ``uri`` (a path, ``file://``, ``s3://``, ``models:/``, ``runs:/`` or ``mlflow-artifacts:/``) a local
    file or folder, downloading when needed. MLflow URIs resolve against ``tracking_uri`` (else the process-wide
    one) and ``registry_uri`` (else the tracking store) without changing the process-wide settings."""
    if not uri:
        raise ConfigError(f"{where}: empty model URI")
    uri = str(uri)
    if uri.startswith(MLFLOW_SCHEMES):
        return _fetch_mlflow(uri, tracking_uri, registry_uri, where)
    if is_s3(uri):
        return Fetched(_download_s3(uri, storage or Storage(), where), uri)
    path = os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)
    if not os.path.exists(path):
        raise DataError(f"{where}: {uri} does not exist")
    return Fetched(path, uri)


def _mlflow_client(tracking_uri: Optional[str], registry_uri: Optional[str]):
    import mlflow

    store = tracking_uri or mlflow.get_tracking_uri()
    return mlflow.MlflowClient(tracking_uri=store, registry_uri=registry_uri or store), store


def _fetch_mlflow(uri: str, tracking_uri: Optional[str], registry_uri: Optional[str], where: str) -> Fetched:
    import mlflow

    from cion_dist.mlflow_io.registry import get_version, version_for_run

    client, store = _mlflow_client(tracking_uri, registry_uri)
    registry = registry_uri or store
    dst = tempfile.mkdtemp(prefix="cion-model-")
    name = version = run_id = None
    canonical, source = uri, uri
    try:
        if uri.startswith("models:/") and not uri[len("models:/") :].startswith("m-"):
            mv = get_version(uri, client)
            name, version, run_id = mv.name, str(mv.version), mv.run_id
            canonical = f"models:/{mv.name}/{mv.version}"
            source = mv.source
        elif uri.startswith("runs:/"):
            run_id, _, sub = uri[len("runs:/") :].partition("/")
            source = canonical = f"runs:/{run_id}/{sub or BACKBONE_DIR}"
            mv = version_for_run(run_id, client)
            if mv is not None:
                name, version, canonical = mv.name, str(mv.version), f"models:/{mv.name}/{mv.version}"
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=dst, tracking_uri=store, registry_uri=registry
        )
    except DataError as e:
        raise DataError(f"{where}: cannot download {uri} from MLflow ({store}): {e}") from e
    except Exception as e:  # noqa: BLE001 - mlflow raises MlflowException, OSError, ... for a bad URI
        raise DataError(f"{where}: cannot download {uri} from MLflow ({store}): {e}") from e
    return Fetched(local, canonical, name, version, run_id)


def _download_s3(uri: str, storage: Storage, where: str) -> str:
    fs, path = storage.fs(uri)
    if not fs.exists(path):
        raise DataError(f"{where}: {uri} does not exist")
    dst = tempfile.mkdtemp(prefix="cion-model-")
    if fs.isdir(path):
        local = os.path.join(dst, os.path.basename(path.rstrip("/")) or "model")
        for src in fs.find(path):
            target = os.path.join(local, os.path.relpath(src, path))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get(src, target)
        return local
    local = os.path.join(dst, os.path.basename(path))
    fs.get(path, local)
    return local


# ---------------------------------------------------------------- locating files


@dataclass(frozen=True)
class Located:
    weights: str  # local weights file
    meta: Optional[dict]  # the backbone.json that describes it, when there is one
    meta_file: Optional[str]
    subdir: str  # where the backbone sits below the fetched path ("" = the path itself)


def _walk_find(folder: str, name: str) -> Optional[str]:
    hits = [os.path.join(r, name) for r, _d, fs in os.walk(folder) if name in fs]
    return min(hits, key=lambda p: (p.count(os.sep), p)) if hits else None


def _is_checkpoint(fname: str) -> bool:
    return fname.lower().endswith(CHECKPOINT_EXTS)


def locate(local: str, where: str) -> Located:
    """The weights file and description in a local file or folder (see the module docstring)."""
    if os.path.isdir(local):
        folder = local
        if not any(os.path.exists(os.path.join(local, f)) for f in (META_FILE, WEIGHTS_FILE)):
            found = _walk_find(local, META_FILE)  # a stage output or run folder: the backbone sits below
            if found is None:
                ckpts = sorted(os.path.join(r, f) for r, _d, fs in os.walk(local) for f in fs if _is_checkpoint(f))
                if not ckpts:
                    raise DataError(f"{where}: {local}: no {META_FILE} in the folder or below it")
                return Located(ckpts[0], None, None, os.path.relpath(os.path.dirname(ckpts[0]), local))
            folder = os.path.dirname(found)
        meta_file = os.path.join(folder, META_FILE)
        meta = read_meta_file(meta_file) if os.path.exists(meta_file) else None
        weights = os.path.join(folder, str((meta or {}).get("weights", WEIGHTS_FILE)))
        if not os.path.exists(weights):
            raise DataError(f"{where}: {folder}: no {WEIGHTS_FILE} in the model folder")
        sub = os.path.relpath(folder, local)
        return Located(weights, meta, meta_file if meta is not None else None, "" if sub == "." else sub)
    folder, fname = os.path.split(local)
    if fname.endswith(".json"):
        meta = read_meta_file(local)
        weights = os.path.join(folder, str(meta.get("weights", WEIGHTS_FILE)))
        if not os.path.exists(weights):
            raise DataError(f"{where}: {local}: its weights file {os.path.basename(weights)} is not beside it")
        return Located(weights, meta, local, "")
    if not fname.lower().endswith(CHECKPOINT_EXTS):
        raise DataError(
            f"{where}: {local}: not a model folder, {META_FILE}, checkpoint ({', '.join(CHECKPOINT_EXTS)}) "
            "or ONNX model (.onnx)"
        )
    for cand in (os.path.splitext(fname)[0] + ".json", META_FILE):
        path = os.path.join(folder, cand)
        if os.path.exists(path):
            return Located(local, read_meta_file(path), path, "")
    return Located(local, None, None, "")


# ---------------------------------------------------------------- loading


@dataclass
class LoadedBackbone:
    """A rebuilt backbone (eval mode) with its description and where it came from."""

    module: nn.Module
    meta: BackboneMeta
    uri: str  # canonical: models:/name/<number>, runs:/<id>/model, the checkpoint URI, or init:<arch>
    weights_digest: str
    name: Optional[str] = None  # registered model name and version, when the model is registered
    version: Optional[str] = None
    run_id: Optional[str] = None  # the run that produced the weights
    weights_file: Optional[str] = None

    @property
    def architecture(self) -> str:
        return self.meta.architecture

    @property
    def embed_dim(self) -> int:
        return self.meta.embed_dim

    @property
    def preprocess(self) -> Optional[Preprocess]:
        """What the export recorded; None for a random init or a bare checkpoint (the config's values apply)."""
        return self.meta.preprocess

    def record(self) -> dict:
        """Input record for lineage (see ``stage_run``)."""
        return {"uri": self.uri, "digest": self.weights_digest, "stage": "model", "mlflow_run_id": self.run_id}


def random_init(architecture: str, seed: int = 0, kwargs: Optional[dict] = None) -> LoadedBackbone:
    """A randomly initialised backbone with a fixed seed, so every process (and every 'before pretraining'
    reference) builds the same network."""
    if not architecture:
        raise ConfigError("init:<architecture> needs an architecture name, e.g. init:resnet18")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = build_backbone(architecture, **(kwargs or {}))
    spec = f"init:{architecture}"
    return LoadedBackbone(
        module.eval(),
        BackboneMeta(architecture, int(module.embed_dim), dict(kwargs or {})),
        spec,
        hashlib.sha256(f"{spec}:seed{seed}".encode()).hexdigest(),
    )


def load_backbone(
    uri: str,
    *,
    architecture: Optional[str] = None,
    storage: Optional[Storage] = None,
    tracking_uri: Optional[str] = None,
    registry_uri: Optional[str] = None,
    where: str = "model",
    architecture_key: str = "the architecture",
) -> LoadedBackbone:
    """Rebuild the backbone ``uri`` names (see the module docstring). ``architecture`` names the network for a
    bare checkpoint and replaces the description's when given; ``where`` and ``architecture_key`` (config keys)
    make errors say what to fix."""
    if uri.startswith("init:"):
        return random_init(uri[len("init:") :] or (architecture or ""))
    got = fetch(uri, storage, tracking_uri, registry_uri, where)
    found = locate(got.path, where)
    meta = meta_for(found.meta, architecture, found.meta_file or f"{where}: {uri}", architecture_key)
    module = build_backbone(meta.architecture, pretrained_path=found.weights, **meta.kwargs).eval()
    dim = int(getattr(module, "embed_dim", 0) or meta.embed_dim)
    if meta.embed_dim and meta.embed_dim != dim:
        raise DataError(
            f"{found.meta_file or uri}: {META_FILE} says embed_dim {meta.embed_dim} but {meta.architecture} "
            f"produces {dim}"
        )
    with open(found.weights, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    canonical = got.uri
    if found.subdir and got.name is None:
        canonical = join(got.uri, found.subdir.replace(os.sep, "/"))
    return LoadedBackbone(
        module, replace(meta, embed_dim=dim), canonical, digest, got.name, got.version, got.run_id, found.weights
    )


# ---------------------------------------------------------------- MLflow artifacts and registry


def log_backbone(files: dict[str, bytes], artifact_path: str = BACKBONE_DIR) -> dict:
    """Log an export (``export_files`` / ``export_model``) as artifacts of the active MLflow run; returns its
    ``backbone.json`` as a dict."""
    import mlflow

    if set(files) != {WEIGHTS_FILE, META_FILE}:
        raise DataError(f"an export holds {WEIGHTS_FILE} and {META_FILE}, got {sorted(files)}")
    with tempfile.TemporaryDirectory() as tmp:
        for fname, data in files.items():
            with open(os.path.join(tmp, fname), "wb") as f:
                f.write(data)
        mlflow.log_artifacts(tmp, artifact_path)
    return json.loads(files[META_FILE])


def register_backbone(
    run_id: str,
    name: str,
    artifact_path: str = BACKBONE_DIR,
    mlflow_client=None,
    tags: Optional[dict] = None,
    description: str = "CION-pretrained person re-ID backbones",
):
    """Register ``<run artifacts>/<artifact_path>`` as a new version of ``name`` (created when missing); returns
    the ``ModelVersion`` once the registry reports it ready."""
    from mlflow.exceptions import MlflowException

    from cion_dist.mlflow_io.registry import client

    c = mlflow_client or client()
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description=description)
    run = c.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = c.create_model_version(name, source, run_id=run_id, tags=tags or {})
    for _ in range(50):
        if mv.status == "READY":
            break
        time.sleep(0.1)
        mv = c.get_model_version(name, mv.version)
    return mv
