"""The embed stage: person crops -> L2-normalised re-ID features (ONNX, torch or handcrafted embedders)."""
