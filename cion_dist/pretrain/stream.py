"""Labelled crops streamed to Ray Train workers by identity shard, as P x K multi-crop batches.

Shape. The labelled set's shards (whole identities each, ``cion_dist.pretrain.labelled``) are dealt to ranks by
image count, once per run; a rank reads only its own shards, so an identity's images reach one worker only. Every
epoch a rank visits its shards in an order drawn from (seed, epoch, rank); a Ray Data task per (epoch, shard)
reads that shard, plans its P x K batches (``sampler.counts_plan``, from (seed, epoch, K, shard)), decodes and
multi-crops each batch on a CPU worker and yields it as one block of uint8 views. The worker consumes one
``DataIterator`` for the whole run (``get_dataset_shard``), which ``IdentityShardIngest`` (a ``DataConfig``)
builds per rank with ordered execution set on that dataset's own context.

Equal steps. Collectives need every rank to take the same number of steps: a shard's step count follows from its
identities' image counts alone (``sampler.steps_for``), so the driver knows each rank's epoch length without
planning it; all ranks take the shortest rank's (shards are balanced, so little is cut), and the schedules are
sized from these exact lengths. A shard's epoch is cut into items of ``steps_per_task`` steps, one task each, so
several tasks decode one shard's batches in parallel.

Memory. A task holds one shard (``shard_images`` encoded images) and the at most ``steps_per_task`` batches it
makes (ordered output releases a task's blocks once it is done); Ray Data runs a few such tasks at once, and the
worker holds ``prefetch_batches`` batches. Nothing is
sized by the corpus but the driver's per-identity index.

Resume. A restarted worker writes its position (epoch, step) into a small cursor actor before iterating; tasks
for (epoch, shard) items wholly before it yield nothing and a task straddling it starts at the right step, so a
resumed run replays exactly the batches the lost attempt would have trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from cion_dist.errors import DataError
from cion_dist.pretrain.augment import MultiCropSpec, crop_batch
from cion_dist.pretrain.sampler import counts_plan, identity_groups, ids_per_batch, plan_seed, steps_for
from cion_dist.pretrain.schedules import instances_for_epoch

DATASET = "labelled"


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The augmentation seed of one rank's batch: the same crops in Ray Data tasks and inline."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0])


# ---------------------------------------------------------------- the plan of a run (pure, driver side)


def assign_shards(images: np.ndarray, world: int) -> list[list[int]]:
    """Shards per rank, largest first to the lightest rank (balanced in images); each rank's list sorted."""
    load = np.zeros(world, dtype=np.int64)
    ranks: list[list[int]] = [[] for _ in range(world)]
    for s in np.argsort(-np.asarray(images), kind="stable"):
        r = int(np.argmin(load))
        ranks[r].append(int(s))
        load[r] += int(images[s])
    return [sorted(r) for r in ranks]


@dataclass
class RunPlan:
    """Which shards each rank reads and how many steps every epoch has: small (per shard and per identity)."""

    shard_counts: dict[int, np.ndarray]  # images per identity, in the shard's row order
    shard_uris: dict[int, str]
    rank_shards: list[list[int]]
    batch: int
    seed: int
    ks: list[int]  # K of every epoch
    steps_per_task: int = 8
    _steps: dict = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        index: pa.Table,
        uris: dict[int, str],
        world: int,
        batch: int,
        seed: int,
        epochs: int,
        gradual_epochs: list[int],
        gradual_instances: list[int],
        steps_per_task: int = 8,
    ) -> "RunPlan":
        shard = index["shard"].to_numpy()
        images = index["images"].to_numpy()
        shards = sorted(set(shard.tolist()))
        missing = [s for s in shards if s not in uris]
        if missing:
            raise DataError(f"the labelled set's index names shards {missing[:5]} that have no file")
        bounds = np.searchsorted(shard, shards + [max(shards) + 1])
        counts = {s: images[bounds[i] : bounds[i + 1]] for i, s in enumerate(shards)}
        if len(shards) < world:
            raise DataError(
                f"the labelled set has {len(shards)} shards for {world} workers; rebuild it for this "
                f"world size or use fewer workers"
            )
        per_shard = np.array([counts[s].sum() for s in shards])
        ranks = [[shards[i] for i in r] for r in assign_shards(per_shard, world)]
        ks = [instances_for_epoch(e, gradual_epochs, gradual_instances) for e in range(epochs)]
        return cls(counts, dict(uris), ranks, int(batch), int(seed), ks, max(1, int(steps_per_task)))

    def shard_steps(self, shard: int, k: int) -> int:
        key = (shard, k)
        if key not in self._steps:
            p = ids_per_batch(self.batch, k)
            self._steps[key] = steps_for(identity_groups(self.shard_counts[shard], k), p)
        return self._steps[key]

    def rank_steps(self, rank: int, k: int) -> int:
        return sum(self.shard_steps(s, k) for s in self.rank_shards[rank])

    def epoch_steps(self, epoch: int) -> int:
        k = self.ks[epoch]
        return min(self.rank_steps(r, k) for r in range(len(self.rank_shards)))

    def check(self) -> None:
        """Refuse, before any worker starts, a corpus whose ranks cannot fill one batch at some K."""
        for k in sorted(set(self.ks)):
            p = ids_per_batch(self.batch, k)
            for r, shards in enumerate(self.rank_shards):
                if self.rank_steps(r, k) == 0:
                    ids = sum(len(self.shard_counts[s]) for s in shards)
                    raise DataError(
                        f"worker {r} of {len(self.rank_shards)} holds {ids} identities in {len(shards)} shard(s) "
                        f"(at most {max(len(self.shard_counts[s]) for s in shards)} in one), too few for one batch "
                        f"of {p} identities x K={k} (batch_size_per_worker={self.batch}); use fewer workers, a "
                        f"smaller batch or more identities"
                    )

    def shard_order(self, epoch: int, rank: int) -> list[int]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, rank, 104729]))
        shards = self.rank_shards[rank]
        return [shards[i] for i in rng.permutation(len(shards))]

    def items(self, rank: int, epochs: range) -> list[dict]:
        """The work items of one rank in training order: (epoch, shard, first step in the epoch, steps, offset in
        the shard's plan), at most ``steps_per_task`` steps each (what one task makes and holds), each epoch cut at
        the shortest rank's length."""
        out = []
        for e in epochs:
            k, cap, first = self.ks[e], self.epoch_steps(e), 0
            for s in self.shard_order(e, rank):
                n = min(self.shard_steps(s, k), cap - first)
                for off in range(0, max(n, 0), self.steps_per_task):
                    m = min(self.steps_per_task, n - off)
                    out.append(
                        {
                            "epoch": e,
                            "rank": rank,
                            "shard": s,
                            "uri": self.shard_uris[s],
                            "first": first + off,
                            "steps": m,
                            "offset": off,
                            "k": k,
                        }
                    )
                first += max(n, 0)
                if first >= cap:
                    break
        return out


# ---------------------------------------------------------------- Ray Data tasks


def shard_counts_from_rows(identity: np.ndarray) -> np.ndarray:
    """Images per identity of a shard whose rows are sorted by identity."""
    if len(identity) == 0:
        return np.zeros(0, np.int64)
    cut = np.flatnonzero(np.diff(identity)) + 1
    return np.diff(np.concatenate([[0], cut, [len(identity)]]))


def shard_batches(
    table: pa.Table, item: dict, batch: int, seed: int, skip: int = 0
) -> Iterator[tuple[int, np.ndarray]]:
    """(step in epoch, row indices) of an item's batches, from step ``first + skip`` on."""
    counts = shard_counts_from_rows(table["identity_id"].to_numpy())
    k = int(item["k"])
    rng = np.random.default_rng(plan_seed(seed, int(item["epoch"]), k, int(item["shard"])))
    plan = counts_plan(counts, k, ids_per_batch(batch, k), rng)
    offset = int(item.get("offset", 0))
    for i in range(skip, int(item["steps"])):
        yield int(item["first"]) + i, plan[offset + i]


def _read_shard(uri: str, storage) -> pa.Table:
    from cion_dist.storage.stage_io import read_table

    return read_table(uri, storage, ["image_id", "identity_id", "jpeg"])


def make_steps(batch: dict, *, spec: MultiCropSpec, batch_size: int, seed: int, augment: bool, cursor, storage):
    """Ray Data UDF: one (epoch, shard) item in, one block per step out (multi-crop views, or the encoded images
    when the worker augments)."""
    import ray

    for i in range(len(batch["epoch"])):
        item = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
        epoch, rank, first, steps = int(item["epoch"]), int(item["rank"]), int(item["first"]), int(item["steps"])
        at_epoch, at_step = ray.get(cursor.get.remote(rank)) if cursor is not None else (0, 0)
        if (epoch, first + steps) <= (at_epoch, at_step) or epoch < at_epoch:
            continue  # trained on before the restart
        skip = at_step - first if epoch == at_epoch and at_step > first else 0
        table = _read_shard(str(item["uri"]), storage)
        ids = table["image_id"]
        jpeg = table["jpeg"]
        for step, rows in shard_batches(table, item, batch_size, seed, skip):
            take = pa.array(rows, pa.int64())
            names = ids.take(take).to_pylist()
            jpegs = jpeg.take(take).to_pylist()
            s = step_seed(seed, epoch, step, rank)
            out = {
                "epoch": np.array([epoch]),
                "step": np.array([step]),
                "seed": np.array([s], dtype=np.uint64),
                "image_ids": np.array([names], dtype=object),
            }
            if augment:
                for v, view in enumerate(crop_batch(jpegs, spec, s, names)):
                    out[f"v{v}"] = view[None]
            else:
                out["jpeg"] = np.array([jpegs], dtype=object)
            yield out


def _make_cursor():
    import ray

    @ray.remote(num_cpus=0)
    class FeedCursor:
        """Where each rank resumes: (epoch, step in epoch)."""

        def __init__(self):
            self.pos: dict[int, tuple[int, int]] = {}

        def set(self, rank: int, epoch: int, step: int) -> None:
            self.pos[int(rank)] = (int(epoch), int(step))

        def get(self, rank: int) -> tuple[int, int]:
            return self.pos.get(int(rank), (0, 0))

    return FeedCursor


def make_cursor():
    return _make_cursor().remote()


def work_items(plan: RunPlan, epochs: int):
    """The run's work list as a dataset, rank 0's items first (one block per item), and each rank's row bounds."""
    import ray

    items, bounds = [], [0]
    for r in range(len(plan.rank_shards)):
        items += plan.items(r, range(epochs))
        bounds.append(len(items))
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))), bounds


def ingest_config(plan: RunPlan, bounds: list[int], *, spec: MultiCropSpec, augment: bool, cursor, storage):
    """The ``DataConfig`` that gives rank ``r`` its own rows of the work list, mapped to multi-crop batches: the
    stream of its shards' batches for every epoch, in order."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    class IdentityShardIngest(DataConfig):
        def __init__(self):
            super().__init__(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))

        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            if world_size != len(plan.rank_shards):
                raise DataError(f"planned for {len(plan.rank_shards)} workers, got {world_size}")
            parts = datasets[DATASET].split_at_indices(bounds[1:-1])
            out = []
            for ds in parts:
                ds = ds.map_batches(
                    make_steps,
                    batch_size=1,
                    batch_format="numpy",
                    num_cpus=1,
                    fn_kwargs={
                        "spec": spec,
                        "batch_size": plan.batch,
                        "seed": plan.seed,
                        "augment": augment,
                        "cursor": cursor,
                        "storage": storage,
                    },
                )
                # ordered execution and quiet progress, on this dataset's own context only
                ds.context.execution_options = self._resolve_execution_options(DATASET)
                ds.context.enable_progress_bars = False
                ds.context.print_on_execution_start = False
                out.append({DATASET: ds.iterator()})
            return out

    return IdentityShardIngest()


# ---------------------------------------------------------------- the worker side


def worker_batches(
    shard, cursor, rank: int, epoch: int, step: int, spec: MultiCropSpec, augment: bool, prefetch: int
) -> Iterator[tuple[int, int, list[np.ndarray], list[str]]]:
    """Yield ``(epoch, step, views, image_ids)`` from this rank's stream, starting at (epoch, step)."""
    import ray

    if cursor is not None:
        ray.get(cursor.set.remote(rank, epoch, step))
    for b in shard.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=prefetch):
        n = len(b["step"])
        for i in range(n):
            names = list(b["image_ids"][i])
            if augment:
                views = [b[f"v{v}"][i] for v in range(spec.ncrops)]
            else:
                views = crop_batch(list(b["jpeg"][i]), spec, int(b["seed"][i]), names)
            yield int(b["epoch"][i]), int(b["step"][i]), views, names


def feed_for_table(table: pa.Table, *, output: str, world: int, batch: int, seed: int, cfg) -> Optional[object]:
    """A labelled set on local storage for an in-memory table (benchmarks, studies): see ``labelled.write_table``."""
    import hashlib

    from cion_dist.pretrain import labelled

    h = hashlib.sha256()
    for col in ("image_id", "identity_id"):
        h.update(str(table[col].to_pylist()).encode())
    h.update(str(table["jpeg"].nbytes).encode())
    return labelled.write_table(
        table,
        output,
        f"table-{h.hexdigest()[:12]}-w{world}-s{cfg.shard_images}",
        world=world,
        shard_images=cfg.shard_images,
        min_ids_per_shard=min_ids_per_shard(cfg),
        seed=seed,
    )


def min_ids_per_shard(cfg) -> int:
    """Identities a shard should hold: a few batches' worth at the smallest K."""
    return 2 * cfg.batch_size_per_worker // min(cfg.gradual_instances)
