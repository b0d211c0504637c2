"""Constant-velocity Kalman filter on box centre and size, one instance per track. Pure numpy.

State ``[cx, cy, w, h, vcx, vcy, vw, vh]``; measurement ``[cx, cy, w, h]``. Noise scales with box height, so a
near (large) person may move more pixels per frame than a far (small) one, as in SORT/ByteTrack-style trackers.
"""

from __future__ import annotations

import numpy as np

_POS_STD = 1.0 / 20
_VEL_STD = 1.0 / 160

_F = np.eye(8)
_F[:4, 4:] = np.eye(4)
_H = np.eye(4, 8)


def box_to_z(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)])


def z_to_box(z: np.ndarray) -> np.ndarray:
    cx, cy, w, h = z[:4]
    w, h = max(w, 1e-3), max(h, 1e-3)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


class BoxKalman:
    def __init__(self, box: np.ndarray):
        z = box_to_z(box)
        self.x = np.concatenate([z, np.zeros(4)])
        h = z[3]
        std = np.array(
            [
                2 * _POS_STD * h,
                2 * _POS_STD * h,
                2 * _POS_STD * h,
                2 * _POS_STD * h,
                10 * _VEL_STD * h,
                10 * _VEL_STD * h,
                10 * _VEL_STD * h,
                10 * _VEL_STD * h,
            ]
        )
        self.P = np.diag(std**2)

    def predict(self, steps: int = 1) -> np.ndarray:
        for _ in range(max(1, steps)):
            h = max(self.x[3], 1e-3)
            q = np.array([_POS_STD * h] * 4 + [_VEL_STD * h] * 4) ** 2
            self.x = _F @ self.x
            self.P = _F @ self.P @ _F.T + np.diag(q)
        return self.box()

    def update(self, box: np.ndarray) -> None:
        z = box_to_z(box)
        h = max(self.x[3], 1e-3)
        R = np.diag(np.array([_POS_STD * h] * 4) ** 2)
        S = _H @ self.P @ _H.T + R
        K = self.P @ _H.T @ np.linalg.inv(S)
        self.x = self.x + K @ (z - _H @ self.x)
        self.P = (np.eye(8) - K @ _H) @ self.P

    def box(self) -> np.ndarray:
        return z_to_box(self.x)
