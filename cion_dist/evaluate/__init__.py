"""Evaluate and promote: re-ID benchmarks, retrieval metrics, feature extraction, fine-tune protocol, promotion."""
