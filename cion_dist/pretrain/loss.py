"""Identity-guided self-distillation loss (CION, docs/method.md section 4.4).

Batch layout (every tensor here): a batch of ``B = P * K`` images holds ``P`` identities with ``K`` consecutive
images each, identity-major: row ``n * K + i`` is image ``i`` of identity ``n``. So ``x[i::K]`` is "image i of every
identity", and rows ``n`` of ``x[i::K]`` and ``x[j::K]`` are two images of the same person. Multi-crop outputs are
stacked view by view: ``teacher_out`` is ``[2 * B, D]`` (global views 0, 1), ``student_out`` is ``[V * B, D]``
(the two global views first, then the local ones).

For teacher view ``a`` and student view ``b != a`` the loss is the cross-entropy of the same image (all ``B`` rows)
plus the ``K(K-1)`` cross-entropies between instance ``i`` of the teacher and instance ``j != i`` of the student
(``P`` rows each), summed and divided by ``K(K-1) + 1``; the total is the mean over the ``2 (V-1)`` view pairs.
With ``K = 1`` it is exactly DINO's loss.

``loss_and_health`` also returns what tells learning from collapse (read by ``cion_dist.pretrain.health``): the
teacher's mean per-image entropy, the entropy of its batch-mean distribution, the KL between teacher and student
(the loss less the teacher entropy it contains, weighted as the loss weights its cross-entropies, so it is exactly
the weighted mean of per-row KLs and never negative) and the centre's norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class IdentityDINOLoss(nn.Module):
    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
        n_global: int = 2,
    ):
        super().__init__()
        self.ncrops = ncrops
        self.n_global = n_global
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, k: int) -> torch.Tensor:
        return self.loss_and_health(student_out, teacher_out, k, health=False)[0]

    def loss_and_health(
        self, student_out: torch.Tensor, teacher_out: torch.Tensor, k: int, health: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, health)``; ``health`` holds detached 0-d tensors (no host sync), empty with ``health=False``.

        Half-precision outputs are not copied to fp32 first: the teacher's are promoted by the fp32 centre, the
        student's log-softmax accumulates in fp32 straight from its half-precision input (at the head's 65536
        prototypes each saved fp32 copy of the student's ``[V * B, D]`` logits is hundreds of MB).
        """
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
        t_logits = ((teacher_out.detach() - self.center) / self.teacher_temp).float()
        # [views, P, K, D]
        t = F.softmax(t_logits, dim=-1).view(n_t, p, k, d)
        s = F.log_softmax(student_out / self.student_temp, dim=-1, dtype=torch.float32).view(self.ncrops, p, k, d)
        # ce[a, b, i, j] = mean over identities n of -sum_d t[a, n, i] * s[b, n, j]
        ce = -torch.einsum("anid,bnjd->abij", t, s) / p
        diag = ce.diagonal(dim1=-2, dim2=-1).sum(-1)  # sum_i ce[a, b, i, i]
        per_pair = (diag / k + (ce.sum((-2, -1)) - diag)) / (k * (k - 1) + 1)  # [n_t, V]
        keep = torch.ones_like(per_pair, dtype=torch.bool)
        keep[torch.arange(n_t), torch.arange(n_t)] = False  # a student view never learns from itself
        loss = per_pair[keep].mean()
        if not health:
            return loss, {}
        with torch.no_grad():
            t_flat = t.view(n_t * b, d)
            row_entropy = -(t_flat * F.log_softmax(t_logits, dim=-1)).sum(-1)  # [n_t * B]
            # the loss's weights over teacher rows: pair (i, j) of identity n counts 1/k on the diagonal, 1 off it
            ent_i = row_entropy.view(n_t, p, k).mean(1)  # [n_t, K]: mean over identities
            weighted = ent_i.sum(-1) * (1.0 / k + k - 1) / (k * (k - 1) + 1)  # [n_t], same for every student view
            mean_t = t_flat.mean(0)
            out = {
                "teacher_entropy": row_entropy.mean(),
                "batch_entropy": -(mean_t * mean_t.clamp_min(1e-30).log()).sum(),
                "kl": loss.detach() - weighted.mean(),
                "center_norm": self.center.norm(),
            }
        return loss, out

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the mean raw teacher logit over both global views, averaged over every rank."""
        batch_sum = teacher_out.sum(dim=0, keepdim=True, dtype=torch.float32)  # fp32 sums, no fp32 copy
        count = torch.tensor([teacher_out.shape[0]], dtype=torch.float32, device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        m = self.center_momentum
        self.center.mul_(m).add_(batch_sum / count, alpha=1 - m)
