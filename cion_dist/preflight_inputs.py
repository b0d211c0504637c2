"""Preflight checks on the files a job names: what can be known from the job file and those files alone.

A missing ONNX model, a YOLOX detector without ``model_uri``, a dataset folder that is not there or a manifest
without a ``uri`` column would otherwise fail inside a Ray task after Ray started (tens of seconds), as a remote
traceback. These checks run in ``run_preflight`` before any stage, in well under a second. Inputs that an earlier
stage of the same pipeline writes (the synthetic corpus, a newest ``latest`` run) are not checked: they do not
exist yet.
"""

from __future__ import annotations

from cion_dist.errors import CionError
from cion_dist.preflight import Preflight, check
from cion_dist.redact import redact_text

_NAMED = ("models:/", "init:", "runs:/")


def _is_file_ref(value) -> bool:
    return isinstance(value, str) and bool(value.strip()) and not value.startswith(_NAMED) and value != "latest"


def _readable_file(uri: str, key: str, storage) -> None:
    """``uri`` exists, is a file, and its first byte can be read; the error names the key."""
    from cion_dist.storage.fs import Storage

    st = storage or Storage()
    shown = redact_text(uri)
    try:
        fs, path = st.fs(uri)
        if not fs.exists(path):
            raise CionError(f"{key}: file not found: {shown}")
        if fs.isdir(path):
            raise CionError(f"{key}: {shown} is a folder, not a model file")
        with fs.open(path, "rb") as f:
            f.read(1)
    except CionError:
        raise
    except PermissionError:
        raise CionError(f"{key}: {shown} cannot be read (permission denied)") from None
    except OSError as e:
        raise CionError(f"{key}: {shown} cannot be read ({type(e).__name__}: {e})") from None


def _storage(pf: Preflight):
    from cion_dist.storage.fs import Storage

    return Storage(pf.job.storage)


@check("detector-settings", stages=("ingest",))
def _detector(pf: Preflight) -> None:
    """A neural detector names a weights file that is there and readable; its thresholds make sense."""
    det = pf.job.ingest.detector
    if det.kind in ("yolox", "torchvision"):
        if not det.model_uri:
            raise CionError(
                f"ingest.detector.model_uri: the {det.kind} detector needs a weights file "
                f"(path or s3://), e.g. ingest.detector.model_uri=models/yolox_nano.onnx"
            )
        _readable_file(det.model_uri, "ingest.detector.model_uri", _storage(pf))


@check("model-files", stages=("embed", "pretrain", "evaluate"))
def _model_files(pf: Preflight) -> None:
    """Model and weight files that embed, pretrain and evaluate read are there and readable."""
    job, st = pf.job, _storage(pf)
    if "embed" in pf.stages:
        if job.embed.backbone == "onnx":
            if not job.embed.model:
                raise CionError("embed.model: the onnx backbone needs a model file (path or s3://)")
            _readable_file(job.embed.model, "embed.model", st)
        # (with pretrain in the run, later iterations embed with the weights pretrain writes)
        if job.embed.backbone == "torch" and _is_file_ref(job.embed.weights) and "pretrain" not in pf.stages:
            _readable_file(job.embed.weights, "embed.weights", st)
    if "pretrain" in pf.stages and _is_file_ref(job.pretrain.pretrained):
        _readable_file(job.pretrain.pretrained, "pretrain.pretrained", st)
    if "evaluate" in pf.stages and _is_file_ref(job.evaluate.model) and "pretrain" not in pf.stages:
        from cion_dist.storage.fs import exists

        if not exists(job.evaluate.model, st):
            raise CionError(f"evaluate.model: not found: {redact_text(job.evaluate.model)}")


@check("dataset-folders", stages=("evaluate",))
def _dataset(pf: Preflight) -> None:
    """The re-ID dataset root exists (unless an earlier stage of this run writes it)."""
    job = pf.job
    root = job.evaluate.dataset
    if not root or "synth" in pf.stages:
        return
    from cion_dist.storage.fs import Storage

    fs, path = Storage(job.storage).fs(root)
    if not fs.exists(path):
        raise CionError(f"evaluate.dataset: folder not found: {redact_text(root)}")
    if not fs.isdir(path):
        raise CionError(f"evaluate.dataset: {redact_text(root)} is a file, not a dataset folder")


@check("manifest-schema", stages=("ingest",))
def _manifest(pf: Preflight) -> None:
    """The manifest parses, has the required columns with the right types, and rows."""
    job = pf.job
    uri = job.ingest.manifest
    if not uri or "synth" in pf.stages:
        return
    from cion_dist.ingest.manifest import load_manifest
    from cion_dist.storage.fs import Storage, exists

    st = Storage(job.storage)
    if not exists(uri, st):
        raise CionError(f"ingest.manifest: not found: {redact_text(uri)}")
    load_manifest(uri, st)
