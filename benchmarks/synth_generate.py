"""Speed of the synthetic corpus generator, next to the floor it cannot beat: encoding the same number of frames.

Target: the default corpus (12 identities, 3 cameras, 6 clips x 120 frames at 640x360) in well under 20 s on one
core; the small test corpus in about 2 s. Run: ``python benchmarks/synth_generate.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from cion_dist.procmem import peak_rss_mb
from cion_dist.storage.fs import Storage
from cion_dist.synth.config import SynthConfig
from cion_dist.synth.encode import Mp4Writer
from cion_dist.synth.generate import generate_corpus
from cion_dist.synth.render import SensorNoise

CONFIGS = {
    "default": {},
    "tiny": dict(
        identities=6,
        cameras=2,
        videos=3,
        frames=40,
        width=320,
        height=192,
        people_per_video=3,
        benchmark_identities=4,
        benchmark_images_per_camera=3,
    ),
}


def encode_only(cfg: SynthConfig) -> float:
    """Baseline: encode ``videos x frames`` noisy flat frames (no scene, no people, no ground truth, no storage)."""
    t0 = time.perf_counter()
    noise = SensorNoise(np.random.default_rng(0), cfg.width, cfg.height)
    flat = np.full((cfg.height, cfg.width, 3), 120, np.uint8)
    for _ in range(cfg.videos):
        w = Mp4Writer(cfg.width, cfg.height, cfg.fps)
        for _ in range(cfg.frames):
            w.add(noise.apply(flat))
        w.finish()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"{'config':8} {'frames':>6} {'generate_s':>10} {'fps':>7} {'encode_only_s':>13} {'ratio':>6}")
    for name, kw in CONFIGS.items():
        gen, base = [], []
        for _r in range(args.repeat):
            with tempfile.TemporaryDirectory() as d:
                cfg = SynthConfig(out=f"{d}/c", **kw)
                t0 = time.perf_counter()
                generate_corpus(cfg, Storage())
                gen.append(time.perf_counter() - t0)
            base.append(encode_only(cfg))
        n = cfg.videos * cfg.frames
        g, b = min(gen), min(base)
        print(f"{name:8} {n:6d} {g:10.2f} {n / g:7.1f} {b:13.2f} {g / b:6.2f}")
    rss = peak_rss_mb()
    print(f"peak RSS {rss:.0f} MiB; best of {args.repeat}; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
