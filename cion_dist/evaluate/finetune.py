"""A short supervised fine-tune in the style of "Bag of Tricks" (Luo et al., CVPRW 2019), for comparing
initialisations on equal terms: P x K batches, BNNeck, ID loss with label smoothing on the classifier after the
BNNeck plus batch-hard triplet loss on the feature before it, Adam, random flip and pad-and-crop.

The losses and the sampler are pure functions; ``finetune`` is the loop that reads images through storage.
"""

from __future__ import annotations

import copy
import logging
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cion_dist.errors import DataError

log = logging.getLogger(__name__)
_CACHE_LIMIT = 20000  # decoded training images kept in memory (uint8 at the input size)


class BNNeck(nn.Module):
    """BatchNorm on the pooled feature (shift frozen at zero) before a bias-free identity classifier."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.bn(feat)
        return normed, self.classifier(normed)


class WithNeck(nn.Module):
    """Backbone followed by the BNNeck's normalisation: the 'after' evaluation feature."""

    def __init__(self, backbone: nn.Module, bn: nn.BatchNorm1d):
        super().__init__()
        self.backbone, self.bn = backbone, bn
        self.embed_dim = backbone.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.backbone(x))


def batch_hard_triplet(feat: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Mean over anchors of ``relu(d(a, hardest positive) - d(a, hardest negative) + margin)`` (Euclidean);
    ``margin=0`` uses the soft margin ``log(1 + exp(dp - dn))``."""
    d = torch.cdist(feat, feat).clamp(min=1e-12)
    same = labels[:, None] == labels[None, :]
    dp = torch.where(same, d, torch.zeros_like(d)).amax(1)
    dn = torch.where(same, torch.full_like(d, float("inf")), d).amin(1)
    if margin > 0:
        return F.relu(dp - dn + margin).mean()
    return F.softplus(dp - dn).mean()


def pk_batches(labels: np.ndarray, p: int, k: int, iterations: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``iterations`` index arrays of P identities x K images (drawn with replacement when an identity has < K)."""
    rng = np.random.default_rng(seed)
    by_id: dict[int, np.ndarray] = {}
    for lab in np.unique(labels):
        by_id[int(lab)] = np.flatnonzero(labels == lab)
    ids = np.array(sorted(by_id))
    if len(ids) < 2:
        raise DataError("fine-tuning needs at least 2 training identities")
    p = min(p, len(ids))
    for _ in range(iterations):
        chosen = rng.choice(ids, size=p, replace=False)
        idx = [rng.choice(by_id[int(c)], size=k, replace=len(by_id[int(c)]) < k) for c in chosen]
        yield np.concatenate(idx)


def augment(x: torch.Tensor, rng: torch.Generator, pad: int = 10) -> torch.Tensor:
    """Random horizontal flip and zero pad + random crop back to size, per image."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=rng) < 0.5
    x = torch.where(flip[:, None, None, None], torch.flip(x, dims=[3]), x)
    if pad <= 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=rng)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=rng)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def finetune(
    backbone: nn.Module,
    train: Sequence,
    cfg,
    storage=None,
    *,
    height: int = 256,
    width: int = 128,
    device: str = "auto",
    seed: int = 0,
    mean=None,
    std=None,
) -> tuple[nn.Module, dict]:
    """Fine-tune a copy of ``backbone`` on ``train`` (``ReidImage`` rows); returns (evaluation model, stats).
    Crops are fed at ``height`` x ``width`` normalised by ``mean`` / ``std`` (None: ImageNet), as evaluation feeds
    them."""
    from cion_dist.evaluate.features import IMAGENET_MEAN, IMAGENET_STD, load_images, resolve_device, to_tensor

    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std

    if not train:
        raise DataError("the finetune protocol needs training images (bounding_box_train) but the dataset has none")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone).to(dev).train()
    # the whole backbone is fine-tuned: a pretraining teacher arrives with requires_grad off on every parameter
    # (it is updated by EMA, not by gradients), which would leave only the neck training
    model.requires_grad_(True)
    pids = np.array([r.pid for r in train])
    classes, labels = np.unique(pids, return_inverse=True)
    neck = BNNeck(int(model.embed_dim), len(classes)).to(dev).train()
    params = [p for p in list(model.parameters()) + list(neck.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    cache: dict[int, np.ndarray] = {}
    uris = [r.uri for r in train]
    first = last = None
    for step, idx in enumerate(pk_batches(labels, cfg.p, cfg.k, cfg.iterations, seed)):
        need = [int(i) for i in idx if int(i) not in cache]
        if need:
            imgs = load_images([uris[i] for i in need], storage, cfg.num_threads)
            for i, im in zip(need, imgs):
                if len(cache) < _CACHE_LIMIT:
                    cache[i] = im
        batch = [cache[int(i)] if int(i) in cache else None for i in idx]
        missing = [j for j, b in enumerate(batch) if b is None]
        if missing:
            for j, im in zip(missing, load_images([uris[int(idx[j])] for j in missing], storage, cfg.num_threads)):
                batch[j] = im
        x = augment(to_tensor(batch, height, width, mean, std), gen).to(dev)
        y = torch.as_tensor(labels[idx], device=dev)
        feat = model(x)
        _, logits = neck(feat)
        loss_id = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        loss_tri = batch_hard_triplet(feat, y, cfg.triplet_margin)
        loss = loss_id + loss_tri
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        val = float(loss.detach())
        first = val if first is None else first
        last = val
        if step % 50 == 0:
            log.info("finetune step %d: id %.4f triplet %.4f", step, float(loss_id.detach()), float(loss_tri.detach()))
    model.eval()
    neck.eval()
    out = WithNeck(model, neck.bn) if cfg.neck_feat == "after" else model
    return out, {"finetune_first_loss": first, "finetune_last_loss": last, "finetune_classes": int(len(classes))}
