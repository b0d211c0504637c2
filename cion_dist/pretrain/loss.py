"""Identity-guided self-distillation loss (CION, METHOD.md 5.4).

Batch layout (every tensor here): a batch of ``B = P * K`` images holds ``P`` identities with ``K`` consecutive
images each, identity-major: row ``n * K + i`` is image ``i`` of identity ``n``. So ``x[i::K]`` is "image i of every
identity", and rows ``n`` of ``x[i::K]`` and ``x[j::K]`` are two images of the same person. Multi-crop outputs are
stacked view by view: ``teacher_out`` is ``[2 * B, D]`` (global views 0, 1), ``student_out`` is ``[V * B, D]``
(the two global views first, then the local ones).

For teacher view ``a`` and student view ``b != a`` the loss is the cross-entropy of the same image (all ``B`` rows)
plus the ``K(K-1)`` cross-entropies between instance ``i`` of the teacher and instance ``j != i`` of the student
(``P`` rows each), summed and divided by ``K(K-1) + 1``; the total is the mean over the ``2 (V-1)`` view pairs.
With ``K = 1`` it is exactly DINO's loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class IdentityDINOLoss(nn.Module):
    def __init__(self, out_dim: int, ncrops: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9, n_global: int = 2):
        super().__init__()
        self.ncrops = ncrops
        self.n_global = n_global
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, k: int) -> torch.Tensor:
        n_t = self.n_global
        b = teacher_out.shape[0] // n_t
        if b * n_t != teacher_out.shape[0] or student_out.shape[0] != b * self.ncrops:
            raise ValueError(
                f"expected teacher rows = {n_t} x B and student rows = {self.ncrops} x B, "
                f"got {teacher_out.shape[0]} and {student_out.shape[0]}"
            )
        if b % k:
            raise ValueError(f"batch of {b} images is not a whole number of identities of K={k} images")
        p = b // k
        d = teacher_out.shape[1]
        # [views, P, K, D]
        t = F.softmax((teacher_out.float() - self.center) / self.teacher_temp, dim=-1).detach().view(n_t, p, k, d)
        s = F.log_softmax(student_out.float() / self.student_temp, dim=-1).view(self.ncrops, p, k, d)
        # ce[a, b, i, j] = mean over identities n of -sum_d t[a, n, i] * s[b, n, j]
        ce = -torch.einsum("anid,bnjd->abij", t, s) / p
        diag = ce.diagonal(dim1=-2, dim2=-1).sum(-1)  # sum_i ce[a, b, i, i]
        per_pair = (diag / k + (ce.sum((-2, -1)) - diag)) / (k * (k - 1) + 1)  # [n_t, V]
        keep = torch.ones_like(per_pair, dtype=torch.bool)
        keep[torch.arange(n_t), torch.arange(n_t)] = False  # a student view never learns from itself
        return per_pair[keep].mean()

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the mean raw teacher logit over both global views, averaged over every rank."""
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_out.shape[0]], dtype=torch.float32, device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        m = self.center_momentum
        self.center.mul_(m).add_(batch_sum / count, alpha=1 - m)
