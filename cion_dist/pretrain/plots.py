"""PNG figures of a pretraining run from the step metrics rank 0 streamed into its MLflow run.

``training_curves.png``: the loss (raw and smoothed) with the epochs where K grew marked; ``training_health.png``:
the schedules (lr, weight decay, teacher momentum), throughput and the share of each step spent waiting for data.
A loss that climbs while K grows is expected (each image then has more same-identity targets); a data-wait share
near 1 means the augmentation tasks do not keep up.
"""

from __future__ import annotations

import io

import numpy as np

CURVES = ("loss", "lr", "wd", "momentum", "K", "images_per_s", "data_wait_fraction")


def metric_history(tracking_uri: str, run_id: str, keys=CURVES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Metric -> (steps, values) sorted by step, read back from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    out = {}
    for key in keys:
        hist = client.get_metric_history(run_id, key)
        if hist:
            pts = sorted((m.step, m.value) for m in hist)
            out[key] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=np.float64))
    return out


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (shorter at the start), so the first point is the first value."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.concatenate([[0.0], v]))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def plot_loss(history: dict) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    if "loss" in history:
        steps, loss = history["loss"]
        ax.plot(steps, loss, color="#9bb7d4", lw=0.8, label="loss")
        ax.plot(steps, smooth(loss, max(1, len(loss) // 20)), color="#1f4e79", lw=1.8, label="smoothed")
    if "K" in history:
        ks, kv = history["K"]
        for i in np.flatnonzero(np.diff(kv) != 0):
            ax.axvline(ks[i + 1], color="#e07b39", ls="--", lw=1)
            ax.annotate(f"K={int(kv[i + 1])}", (ks[i + 1], ax.get_ylim()[1]), va="top", ha="left", color="#e07b39")
    ax.set_xlabel("step")
    ax.set_ylabel("identity self-distillation loss")
    ax.set_title("pretraining loss")
    ax.legend()
    return _png(fig)


def plot_health(history: dict) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    panels = (
        (axes[0, 0], ("lr",), "learning rate"),
        (axes[0, 1], ("momentum",), "teacher momentum"),
        (axes[1, 0], ("images_per_s",), "images / s"),
        (axes[1, 1], ("data_wait_fraction",), "data wait share"),
    )
    for ax, keys, title in panels:
        for key in keys:
            if key in history:
                ax.plot(*history[key], lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    if "wd" in history:
        twin = axes[0, 0].twinx()
        twin.plot(*history["wd"], color="#6a9f58", lw=1, ls="--")
        twin.set_ylabel("weight decay (dashed)")
    if "data_wait_fraction" in history:
        axes[1, 1].set_ylim(0, 1)
    fig.tight_layout()
    return _png(fig)


def pretrain_figures(history: dict) -> dict[str, bytes]:
    return {"training_curves.png": plot_loss(history), "training_health.png": plot_health(history)}
