"""Where the benchmarks find real files (a person detector and a re-ID model as ONNX, MOT17 frames, videos):
``$CION_SHARED_DATA``, by default ``shared/data`` beside the checkout (README, "Set-up")."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("CION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
