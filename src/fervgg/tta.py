"""Test-time augmentation, shared by evaluation and prediction (numpy and OpenCV only, so
the TensorFlow-free LiteRT path can use it too).

Ten crops per image: the four corners and the centre at config.TTA_CROP_FRACTION of the
side, each also mirrored, every crop resized back to the model's input size; the model's
ten predictions are averaged. The crops stay inside what training augmentation shows the
model (zoom and shift up to 10%), so each view is one it has learnt to read.
"""

from __future__ import annotations

import numpy as np

from fervgg import config

VIEWS = 10
_CV2_MAX_CHANNELS = 512  # cv2.resize takes at most this many channels at once


def crop_side(size: int, fraction: float = config.TTA_CROP_FRACTION) -> int:
    return min(size, max(1, round(fraction * size)))


def description(size: int, fraction: float = config.TTA_CROP_FRACTION) -> str:
    c = crop_side(size, fraction)
    return (f"mean of {VIEWS} views: {c}x{c} crops at the 4 corners and the centre, each also mirrored, "
            f"resized to {size}x{size}")


def ten_crop(x: np.ndarray, fraction: float = config.TTA_CROP_FRACTION) -> np.ndarray:
    """(N, S, S) or (N, S, S, 1) pixels -> (10, N, S, S, 1), same dtype."""
    import cv2

    x = np.asarray(x)
    if x.ndim == 4:
        x = x[..., 0]
    n, size = x.shape[0], x.shape[1]
    c = crop_side(size, fraction)
    far, mid = size - c, (size - c) // 2
    out = np.empty((VIEWS, n, size, size), dtype=x.dtype)
    for v, (top, left) in enumerate(((0, 0), (0, far), (far, 0), (far, far), (mid, mid))):
        crops = np.ascontiguousarray(x[:, top:top + c, left:left + c].transpose(1, 2, 0))  # (c, c, N)
        for start in range(0, n, _CV2_MAX_CHANNELS):
            chunk = crops[:, :, start:start + _CV2_MAX_CHANNELS]
            resized = cv2.resize(chunk, (size, size), interpolation=cv2.INTER_LINEAR)
            out[v, start:start + chunk.shape[2]] = resized.reshape(size, size, -1).transpose(2, 0, 1)
        out[v + VIEWS // 2] = out[v, :, :, ::-1]
    return out[..., None]


def predict_averaged(predict, x: np.ndarray) -> np.ndarray:
    """Mean of `predict` (a function (M, S, S, 1) -> (M, C)) over the ten views of x."""
    views = ten_crop(x)
    n = views.shape[1]
    probs = np.asarray(predict(views.reshape(VIEWS * n, *views.shape[2:])))
    return probs.reshape(VIEWS, n, -1).mean(axis=0)
