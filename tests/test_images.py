"""The one image decoder: round trip, and a DataError naming the image for empty or non-image bytes."""

from __future__ import annotations

import numpy as np
import pytest

from cion_dist.errors import DataError
from cion_dist.images import decode_image, encode_jpeg


def test_jpeg_round_trip_keeps_rgb_order():
    rgb = np.zeros((32, 16, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: a BGR/RGB mix-up would put it in the last channel
    back = decode_image(encode_jpeg(rgb, 95), "red")
    assert back.shape == (32, 16, 3) and back.dtype == np.uint8
    assert abs(int(back[..., 0].mean()) - 200) <= 3 and back[..., 2].max() <= 5


@pytest.mark.parametrize(
    "data, message",
    [(b"", "image crop-7 is empty"), (None, "image crop-7 is empty"), (b"junk", "cannot decode image crop-7")],
)
def test_bad_bytes_are_a_data_error_naming_the_image(data, message):
    with pytest.raises(DataError, match=message):
        decode_image(data, "crop-7")
