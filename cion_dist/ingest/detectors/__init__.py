"""Person detectors behind one small interface (``Detector.detect``)."""

from cion_dist.ingest.detectors.base import Detections, Detector, make_detector

__all__ = ["Detections", "Detector", "make_detector"]
