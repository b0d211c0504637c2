"""Sampled decoding returns exactly the frames decord's random access returns, in bounded chunks."""

from __future__ import annotations

import io

import numpy as np
import pytest

from cion_dist.errors import DataError
from cion_dist.ingest.decode import iter_chunks, open_clip, sample_indices


@pytest.mark.parametrize("every_n", [1, 3, 7])
def test_strided_and_batched_decode_match_random_access(shared_data, every_n):
    import decord

    data = (shared_data / "videos" / "vtest.avi").read_bytes()
    clip = open_clip(data, name="vtest.avi")
    idx = sample_indices(clip.num_frames, clip.fps, every_n=every_n, max_frames=40)
    chunks = list(iter_chunks(clip, idx, chunk_frames=16, name="vtest.avi"))
    assert max(len(i) for i, _ in chunks) <= 16
    got = np.concatenate([f for _, f in chunks])
    ref = decord.VideoReader(io.BytesIO(data), num_threads=1).get_batch(idx.tolist()).asnumpy()
    assert got.shape == (len(idx), 576, 768, 3)
    assert np.array_equal(got, ref)


def test_sample_indices_rates():
    assert sample_indices(10, 10.0, every_n=3).tolist() == [0, 3, 6, 9]
    assert sample_indices(20, 10.0, sample_fps=5).tolist() == list(range(0, 20, 2))
    assert sample_indices(20, 10.0, sample_fps=50).tolist() == list(range(20))
    assert sample_indices(0, 10.0).tolist() == []


def test_bad_bytes_name_the_clip():
    with pytest.raises(DataError, match="clip-7: clip is empty"):
        open_clip(b"", name="clip-7")
    with pytest.raises(DataError, match="clip-8: cannot decode"):
        open_clip(b"\x00" * 4096, name="clip-8")
