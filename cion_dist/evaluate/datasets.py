"""Re-ID benchmark readers: Market-1501 folders, MSMT17 list files, or a generic CSV/Parquet list.

Every reader returns a ``ReidDataset`` of image URIs with person id and camera id for the ``train``, ``query`` and
``gallery`` splits. Roots may be local folders or ``s3://`` prefixes (through ``cion_dist.storage``).

Market-1501 protocol (Zheng et al., ICCV 2015): file names ``PPPP_cCsS_FFFFFF_NN.jpg``; person id ``-1`` marks
junk detections, ignored everywhere; ``0000`` marks distractors: never a query nor a training identity, but kept
in the gallery as negatives (as the benchmark's own evaluation does) unless ``keep_distractors=False``.
Cameras are stored 0-based.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage, is_s3, join

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)(?:s\d+)?_\d+(?:_\d+)?\.(?:jpe?g|png|bmp)$", re.IGNORECASE)
SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class ReidImage:
    uri: str
    pid: int
    camid: int
    size: int = -1  # bytes, when the listing gave it (part of the digest)


@dataclass
class ReidDataset:
    name: str
    root: str
    train: list[ReidImage] = field(default_factory=list)
    query: list[ReidImage] = field(default_factory=list)
    gallery: list[ReidImage] = field(default_factory=list)
    junk: int = 0  # images with person id -1 (junk detections), left out of every split by the protocol

    def split(self, name: str) -> list[ReidImage]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def digest(self) -> str:
        """sha256 over every split's (path relative to the root, pid, camera, byte size), in sorted order.

        Names, labels and sizes change whenever images are added, removed, relabelled or re-encoded, so two
        evaluations are comparable exactly when their digests agree; images are not re-read to compute it.
        """
        h = hashlib.sha256()
        root = self.root.rstrip("/")
        for split in SPLITS:
            for im in sorted(self.split(split), key=lambda r: r.uri):
                rel = im.uri[len(root) :].lstrip("/") if im.uri.startswith(root) else im.uri
                h.update(f"{split}\t{rel}\t{im.pid}\t{im.camid}\t{im.size}\n".encode())
        return h.hexdigest()

    def counts(self) -> dict[str, int]:
        out = {}
        for s in SPLITS:
            items = self.split(s)
            out[f"{s}_images"] = len(items)
            out[f"{s}_ids"] = len({r.pid for r in items})
        return out


def _uri(root: str, path: str) -> str:
    return ("s3://" + path) if is_s3(root) else path


def _list_images(fs, path: str, where: str) -> list[tuple[str, int]]:
    if not fs.exists(path):
        raise DataError(f"missing folder {where}")
    entries = fs.find(path, detail=True)
    return sorted((p, int(info.get("size") or -1)) for p, info in entries.items() if p.lower().endswith(IMAGE_EXTS))


def parse_market_name(name: str, where: str) -> tuple[int, int]:
    """(pid, 0-based camera) from a Market-1501 file name; ``DataError`` naming the file otherwise."""
    m = MARKET_NAME.match(name)
    if not m:
        raise DataError(f"{where}: file name {name!r} is not of the form PPPP_cCsS_FFFFFF_NN.jpg")
    cam = int(m.group(2))
    if cam < 1:
        raise DataError(f"{where}: camera number must start at 1 in {name!r}")
    return int(m.group(1)), cam - 1


def read_market(
    root: str, storage: Optional[Storage] = None, keep_distractors: bool = True, require_train: bool = False
) -> ReidDataset:
    """Market-1501 layout: ``bounding_box_train/``, ``bounding_box_test/`` (gallery), ``query/``."""
    st = storage or Storage()
    ds = ReidDataset("market1501", root.rstrip("/"))
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for split, folder in folders.items():
        uri = join(root, folder)
        fs, path = st.fs(uri)
        if split == "train" and not require_train and not fs.exists(path):
            continue
        rows = []
        for p, size in _list_images(fs, path, uri):
            name = posixpath.basename(p)
            pid, cam = parse_market_name(name, _uri(root, p))
            if pid == -1:
                ds.junk += 1
                continue
            if pid == 0 and (split != "gallery" or not keep_distractors):
                continue
            rows.append(ReidImage(_uri(root, p), pid, cam, size))
        setattr(ds, split, rows)
    return _checked(ds)


def _read_text(st: Storage, uri: str) -> str:
    fs, path = st.fs(uri)
    if not fs.exists(path):
        raise DataError(f"missing list file {uri}")
    with fs.open(path, "rb") as f:
        return f.read().decode("utf-8")


def read_msmt17(root: str, storage: Optional[Storage] = None) -> ReidDataset:
    """MSMT17: ``list_{train,val,query,gallery}.txt`` with lines ``<relative path> <pid>``; images under
    ``train/`` (train, val) and ``test/`` (query, gallery), or the V2 ``mask_train_v2``/``mask_test_v2``.
    The camera is the third ``_``-separated field of the file name (1-based in the file)."""
    st = storage or Storage()
    ds = ReidDataset("msmt17", root.rstrip("/"))

    def image_dir(*names: str) -> str:
        for n in names:
            fs, path = st.fs(join(root, n))
            if fs.exists(path):
                return join(root, n)
        raise DataError(f"missing image folder under {root}: expected one of {', '.join(names)}")

    lists = {"train": ["list_train.txt", "list_val.txt"], "query": ["list_query.txt"], "gallery": ["list_gallery.txt"]}
    for split, files in lists.items():
        base = image_dir("train", "mask_train_v2") if split == "train" else image_dir("test", "mask_test_v2")
        rows = []
        for fname in files:
            uri = join(root, fname)
            if fname == "list_val.txt":
                fs, path = st.fs(uri)
                if not fs.exists(path):
                    continue
            for lineno, line in enumerate(_read_text(st, uri).splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise DataError(f"{uri}:{lineno}: expected '<path> <pid>', got {line!r}")
                rel, pid_s = parts
                fields = posixpath.basename(rel).split("_")
                try:
                    pid = int(pid_s)
                    cam = int(fields[2]) - 1
                except (ValueError, IndexError):
                    raise DataError(f"{uri}:{lineno}: cannot read pid/camera from {line!r}") from None
                rows.append(ReidImage(join(base, rel), pid, cam))
        setattr(ds, split, rows)
    return _checked(ds)


def read_list(uri: str, storage: Optional[Storage] = None) -> ReidDataset:
    """A CSV or Parquet table with columns ``path, pid, camid, split`` (split in train/query/gallery).

    Relative paths resolve against the table's folder."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    st = storage or Storage()
    fs, path = st.fs(uri)
    if not fs.exists(path):
        raise DataError(f"missing list file {uri}")
    with fs.open(path, "rb") as f:
        raw = f.read()
    try:
        table = pq.read_table(io.BytesIO(raw)) if uri.lower().endswith(".parquet") else pacsv.read_csv(io.BytesIO(raw))
    except Exception as e:  # noqa: BLE001 - name the file whatever the reader raised
        raise DataError(f"cannot read list file {uri}: {e}") from e
    missing = [c for c in ("path", "pid", "camid", "split") if c not in table.column_names]
    if missing:
        raise DataError(f"{uri}: missing column(s) {', '.join(missing)} (need path, pid, camid, split)")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    ds = ReidDataset("list", base)
    cols = {c: table.column(c).to_pylist() for c in ("path", "pid", "camid", "split")}
    for i, (p, pid, cam, split) in enumerate(zip(cols["path"], cols["pid"], cols["camid"], cols["split"])):
        if split not in SPLITS:
            raise DataError(f"{uri}: row {i}: split {split!r} is not one of {', '.join(SPLITS)}")
        try:
            pid_i, cam_i = int(pid), int(cam)
        except (TypeError, ValueError):
            raise DataError(f"{uri}: row {i}: pid {pid!r} / camid {cam!r} are not integers") from None
        if not p:
            raise DataError(f"{uri}: row {i}: empty path")
        full = p if (is_s3(p) or p.startswith("/")) else join(base, p)
        ds.split(split).append(ReidImage(full, pid_i, cam_i))
    return _checked(ds)


def _checked(ds: ReidDataset) -> ReidDataset:
    for split in ("query", "gallery"):
        if not ds.split(split):
            raise DataError(f"{ds.root}: no {split} images found")
    return ds


def detect_format(root: str, storage: Optional[Storage] = None) -> str:
    if root.lower().endswith((".csv", ".parquet")):
        return "list"
    fs, path = (storage or Storage()).fs(join(root, "list_query.txt"))
    return "msmt17" if fs.exists(path) else "market"


def load_dataset(
    root: str, fmt: str = "auto", storage: Optional[Storage] = None, keep_distractors: bool = True
) -> ReidDataset:
    """Read a benchmark in the named (or detected) format."""
    st = storage or Storage()
    fs, path = st.fs(root)
    if not fs.exists(path):
        raise DataError(f"re-ID dataset not found: {root}")
    fmt = detect_format(root, st) if fmt == "auto" else fmt
    if fmt == "market":
        return read_market(root, st, keep_distractors=keep_distractors)
    if fmt == "msmt17":
        return read_msmt17(root, st)
    if fmt == "list":
        return read_list(root, st)
    raise DataError(f"unknown dataset format {fmt!r}; use auto, market, msmt17 or list")


def pids_cams(items: Iterable[ReidImage]):
    import numpy as np

    items = list(items)
    return np.array([r.pid for r in items], dtype=np.int64), np.array([r.camid for r in items], dtype=np.int64)
