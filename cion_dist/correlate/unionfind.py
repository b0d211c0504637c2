"""Disjoint sets over integer ids 0..n-1 (path halving, union by size): the merge bookkeeping of levels 2 and 3."""

from __future__ import annotations

import numpy as np


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return int(x)

    def union(self, a: int, b: int) -> int:
        """Join the sets of a and b; returns the surviving root."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra

    def roots(self) -> np.ndarray:
        """The root of every id (vectorised pointer jumping; compresses every path)."""
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                break
            p[:] = q
        return p.copy()

    def labels(self) -> np.ndarray:
        """Component label per id, numbered 0.. in order of each component's smallest id."""
        roots = np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64, count=len(self.parent))
        lut: dict[int, int] = {}
        out = np.empty(len(roots), dtype=np.int64)
        for i, r in enumerate(roots):
            out[i] = lut.setdefault(int(r), len(lut))
        return out
