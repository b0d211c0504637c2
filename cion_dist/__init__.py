"""cion-dist: person videos in object storage -> identity-labelled crops -> CION re-ID pretraining, on Ray."""

__version__ = "0.1.0"
