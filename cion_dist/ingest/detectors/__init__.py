"""Person detectors behind one small interface (``Detector.detect``), built by ``make_detector``."""

from cion_dist.ingest.detectors.base import Detections, Detector
from cion_dist.ingest.detectors.factory import make_detector

__all__ = ["Detections", "Detector", "make_detector"]
