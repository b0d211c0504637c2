"""Pure pieces of pretraining: loss, schedules, P x K sampler, multi-crop augmentation, memory measurement."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cion_dist.errors import DataError
from cion_dist.pretrain.augment import MultiCropSpec, crop_batch, normalize, random_resized_crop
from cion_dist.pretrain.loss import IdentityDINOLoss
from cion_dist.pretrain.memory import module_bytes, tensor_breakdown
from cion_dist.pretrain.schedules import Schedules, at, cosine_schedule, instances_for_epoch


def naive_loss(student_out, teacher_out, center, k, ncrops, ts=0.1, tt=0.04):
    """The loss of docs/method.md section 4.4 written loop by loop: 18 (a, b) pairs for ncrops=10, K(K-1)+1 terms
    each."""
    s_views = (student_out / ts).chunk(ncrops)
    t_views = F.softmax((teacher_out - center) / tt, dim=-1).chunk(2)

    def h(p, s):
        return torch.sum(-p * F.log_softmax(s, dim=-1), dim=-1).mean()

    total, n = 0.0, 0
    for a, t in enumerate(t_views):
        for b, s in enumerate(s_views):
            if a == b:
                continue
            term = h(t, s)
            for i in range(k):
                for j in range(k):
                    if i != j:
                        term = term + h(t[i::k], s[j::k])
            total = total + term / (k * (k - 1) + 1)
            n += 1
    return total / n


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("n_local", [0, 3])
def test_loss_matches_loop_by_loop_reference(k, n_local):
    g = torch.Generator().manual_seed(10 * k + n_local)
    ncrops, p, d = 2 + n_local, 3, 17
    b = p * k
    student = torch.randn(ncrops * b, d, generator=g)
    teacher = torch.randn(2 * b, d, generator=g)
    loss_fn = IdentityDINOLoss(d, ncrops)
    loss_fn.center.copy_(torch.randn(1, d, generator=g) * 0.1)
    got = loss_fn(student, teacher, k)
    want = naive_loss(student, teacher, loss_fn.center, k, ncrops)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got.item(), want.item())


def test_loss_pairs_identities_not_positions():
    """Swapping two identities' images inside a chunk changes the loss only through the identity pairing."""
    d, k, p = 8, 2, 2
    loss_fn = IdentityDINOLoss(d, 2)
    teacher = torch.randn(2 * p * k, d)
    student = teacher.clone() * 10  # student agrees with the teacher image by image
    base = loss_fn(student, teacher, k)
    # break identity grouping: rows 1 and 2 (identity 0 img 1 <-> identity 1 img 0) swap in the student only
    perm = torch.arange(2 * p * k)
    perm[[1, 2]] = perm[[2, 1]]
    assert not torch.isclose(loss_fn(student[perm], teacher, k), base)
    with pytest.raises(ValueError, match="not a whole number of identities"):
        loss_fn(torch.randn(2 * 5, d), torch.randn(2 * 5, d), 2)


def test_center_update_is_momentum_average_of_raw_teacher_logits():
    loss_fn = IdentityDINOLoss(4, 2, center_momentum=0.9)
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    loss_fn.update_center(t)
    assert torch.allclose(loss_fn.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0, 2.0]]))
    loss_fn.update_center(t)
    assert torch.allclose(loss_fn.center, (0.9 * 0.2 + 0.1 * 2.0) * torch.ones(1, 4))


def test_schedules():
    lr = cosine_schedule(1.0, 0.01, epochs=10, steps_per_epoch=5, warmup_epochs=2)
    assert len(lr) == 50
    assert lr[0] == 0.0 and math.isclose(lr[9], 1.0)  # linear warm-up over 10 steps, reaching the peak
    assert np.all(np.diff(lr[:10]) > 0) and np.all(np.diff(lr[10:]) <= 1e-12)
    assert math.isclose(lr[10], 1.0) and lr[-1] > 0.01 and math.isclose(lr[-1], 0.01, abs_tol=2e-3)
    s = Schedules.build(
        epochs=4,
        steps_per_epoch=10,
        lr=2e-3,
        min_lr=1e-6,
        warmup_epochs=1,
        weight_decay=0.04,
        weight_decay_end=0.4,
        momentum_teacher=0.996,
    )
    assert math.isclose(at(s.wd, 0), 0.04) and at(s.wd, 39) > 0.399
    assert math.isclose(at(s.momentum, 0), 0.996) and at(s.momentum, 39) > 0.99999
    assert s.values(1000) == s.values(39)  # clamped past the end (longer epochs at larger K)
    assert [instances_for_epoch(e, [40, 60, 80, 100], [2, 4, 6, 8]) for e in (0, 39, 40, 59, 60, 80, 99, 120)] == [
        2,
        2,
        4,
        4,
        6,
        8,
        8,
        8,
    ]
    with pytest.raises(ValueError):
        instances_for_epoch(0, [1, 2], [2])


def _jpeg(w=64, h=160, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def test_multicrop_shapes_ranges_and_seed():
    spec = MultiCropSpec(local_crops=3)
    views = crop_batch([_jpeg(seed=1), _jpeg(seed=2)], spec, seed=7)
    assert [v.shape for v in views] == [(2, 3, 256, 128)] * 2 + [(2, 3, 128, 64)] * 3
    assert all(v.dtype == np.uint8 for v in views)
    again = crop_batch([_jpeg(seed=1), _jpeg(seed=2)], spec, seed=7)
    assert all(np.array_equal(u, v) for u, v in zip(views, again))
    other = crop_batch([_jpeg(seed=1), _jpeg(seed=2)], spec, seed=8)
    assert not np.array_equal(views[0], other[0])
    x = normalize(torch.from_numpy(views[0]))
    assert x.dtype == torch.float32 and -2.2 < float(x.min()) and float(x.max()) < 2.7
    with pytest.raises(DataError, match="cannot decode image bad"):
        crop_batch([b"not a jpeg"], spec, seed=0, names=["bad"])


def test_random_resized_crop_respects_scale_and_aspect():
    img = Image.new("RGB", (200, 400))
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = random_resized_crop(img, (256, 128), (0.05, 0.8), (0.4, 0.6), rng)
        assert out.size == (128, 256)


def tensor_bytes(exclude=()):
    return sum(tensor_breakdown({}, exclude).values())


def test_tensor_bytes_counts_each_storage_once_and_leaves_out_excluded_modules():
    base = tensor_bytes()
    flat = torch.zeros(250_000)  # 1,000,000 bytes, then 100 views into it: ZeRO's flat buffers look like this
    views = [flat[i * 2500 : (i + 1) * 2500] for i in range(100)]
    assert tensor_bytes() - base == 1_000_000
    layer = torch.nn.Linear(500, 400)  # (500 * 400 + 400) * 4 bytes
    assert tensor_bytes() - base == 1_000_000 + 801_600
    assert tensor_bytes(exclude=[layer]) - base == 1_000_000
    assert module_bytes(layer) == 801_600
    del flat, views
    assert tensor_bytes() - base == 801_600


def test_deepspeed_buckets_follow_the_model_size():
    from cion_dist.pretrain.config import PretrainConfig
    from cion_dist.pretrain.train_loop import deepspeed_config

    cfg = PretrainConfig(zero_stage=3, batch_size_per_worker=8)
    ds = deepspeed_config(cfg, world_size=2, n_params=21_000_000)
    zero = ds["zero_optimization"]
    # ZeRO-3 allocates its reduce bucket up front: a quarter of the model, not DeepSpeed's 5e8 elements
    assert (
        zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == zero["stage3_prefetch_bucket_size"] == 5_250_000
    )
    assert ds["train_batch_size"] == 16 and zero["stage"] == 3
    assert deepspeed_config(cfg, 2, 1000)["zero_optimization"]["reduce_bucket_size"] == 2**20
    assert deepspeed_config(cfg, 2, 10**11)["zero_optimization"]["reduce_bucket_size"] == 500_000_000
    explicit = PretrainConfig(zero_stage=2, comm_bucket_numel=12345)
    zero2 = deepspeed_config(explicit, 2, 21_000_000)["zero_optimization"]
    assert zero2["reduce_bucket_size"] == 12345 and "stage3_prefetch_bucket_size" not in zero2


def test_tensor_breakdown_files_each_storage_under_its_first_part():
    base = tensor_breakdown({})["other"]
    flat = torch.zeros(250_000)
    weights = [flat[:1000], flat[1000:]]  # two views of one flat buffer: one storage, counted once
    moments = [torch.zeros(500), torch.zeros(500)]
    loose = torch.zeros(100)
    got = tensor_breakdown({"weights": weights, "optimizer": moments + weights})
    assert got["weights"] == 1_000_000 and got["optimizer"] == 4_000
    assert got["other"] - base == 400
    del loose
