"""Driver-side helpers of the correlate stage: one listing instead of a probe per unit, bounded Ray fan-out.

A rerun learns which units exist from one paginated listing of a folder (about one request per 1,000 keys on
S3) and a set difference, never from an existence check per unit. The filesystem's listing cache is dropped
after each listing, so the driver does not keep ~1.8 KB per key (s3fs) for the rest of the run. ``bounded``
keeps at most ``in_flight`` tasks submitted and hands back each result as it lands, so the driver never holds
every task's result at once.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from cion_dist.storage.fs import Storage, join
from cion_dist.storage.stage_io import StageOutput


def _drop_listing_cache(fs, path: str) -> None:
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001 - a filesystem without a cache has nothing to drop
        pass


def list_files(uri: str, storage: Storage, suffix: str = ".parquet", recursive: bool = False) -> list[str]:
    """URIs of the ``suffix`` files directly in folder ``uri`` (or anywhere under it), sorted; one listing."""
    fs, path = storage.fs(uri)
    try:
        found = fs.find(path, maxdepth=None if recursive else 1)
    except FileNotFoundError:
        found = []
    finally:
        _drop_listing_cache(fs, path)
    scheme = "s3://" if str(uri).startswith("s3") else ""
    return sorted(scheme + p for p in found if p.endswith(suffix))


def listed_names(out: StageOutput, subdir: str = "") -> set[str]:
    """File names present in a run folder (or one of its sub-folders), from one listing."""
    base = join(out.uri, subdir) if subdir else out.uri
    return {u.rsplit("/", 1)[-1] for u in list_files(base, out.storage, suffix="")}


def missing_units(out: StageOutput, units: Iterable[str], subdir: str = "", prefix: str = "part") -> list[int]:
    """Positions of the units (in the given order) whose file is absent: one listing and a set difference."""
    from cion_dist.storage.stage_io import unit_filename

    have = listed_names(out, subdir)
    return [i for i, u in enumerate(units) if unit_filename(u, prefix) not in have]


def bounded(refs: Iterable, in_flight: int = 16) -> Iterator[tuple[int, object]]:
    """(submission index, result) of each Ray task as it finishes, with at most ``in_flight`` pending."""
    import ray

    it = iter(enumerate(refs))
    pending: dict = {}
    for i, ref in it:
        pending[ref] = i
        if len(pending) >= in_flight:
            break
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            yield i, ray.get(ref)
        for i, ref in it:
            pending[ref] = i
            if len(pending) >= in_flight:
                break
