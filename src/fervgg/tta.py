"""Test-time augmentation, shared by evaluation and prediction (numpy and OpenCV only, so
the TensorFlow-free LiteRT path can use it too).

Ten views per image, the four corners and the centre, each also mirrored; the model's ten
predictions are averaged. Which windows depends on how the model was trained:

- an ordinary model: crops at config.TTA_CROP_FRACTION of the side, resized back to the
  model's input size. They stay inside what training augmentation shows the model (zoom
  and shift up to 10%), so each view is one it has learnt to read;
- a model trained on random crop_size windows (its sidecar's "crop_size"; it reads the
  centre window through a CenterCrop layer): the crop_size windows themselves, each put
  back at the centre of a zero canvas of the input size (training.random_crops does the
  same), so the model reads exactly that window, at the scale it was trained on.
"""

from __future__ import annotations

import numpy as np

from fervgg import config
from fervgg.classifiers import Classifier

VIEWS = 10
_CV2_MAX_CHANNELS = 512  # cv2.resize takes at most this many channels at once


def crop_side(size: int, fraction: float = config.TTA_CROP_FRACTION) -> int:
    return min(size, max(1, round(fraction * size)))


def description(size: int, crop_size: int = 0) -> str:
    if crop_size:
        return (f"mean of {VIEWS} views: the model's {crop_size}x{crop_size} window at the 4 corners and the "
                f"centre of the {size}x{size} image, each also mirrored")
    c = crop_side(size)
    return (f"mean of {VIEWS} views: {c}x{c} crops at the 4 corners and the centre, each also mirrored, "
            f"resized to {size}x{size}")


def _corners(size: int, crop: int) -> tuple[tuple[int, int], ...]:
    """(top, left) of the four corner windows and the centre one (where CenterCrop reads)."""
    far, mid = size - crop, (size - crop) // 2
    return (0, 0), (0, far), (far, 0), (far, far), (mid, mid)


def ten_crop(x: np.ndarray, fraction: float = config.TTA_CROP_FRACTION, crop_size: int = 0) -> np.ndarray:
    """(N, S, S) or (N, S, S, 1) pixels -> (10, N, S, S, 1), same dtype: views 0-4 the
    corners and centre, 5-9 the same mirrored. With crop_size, the windows of that side on
    a zero canvas (see the module's description); else crops at `fraction`, resized."""
    x = np.asarray(x)
    if x.ndim == 4:
        x = x[..., 0]
    n, size = x.shape[0], x.shape[1]
    if crop_size:
        return _windows(x, crop_size)[..., None]
    import cv2

    c = crop_side(size, fraction)
    out = np.empty((VIEWS, n, size, size), dtype=x.dtype)
    for v, (top, left) in enumerate(_corners(size, c)):
        crops = np.ascontiguousarray(x[:, top:top + c, left:left + c].transpose(1, 2, 0))  # (c, c, N)
        for start in range(0, n, _CV2_MAX_CHANNELS):
            chunk = crops[:, :, start:start + _CV2_MAX_CHANNELS]
            resized = cv2.resize(chunk, (size, size), interpolation=cv2.INTER_LINEAR)
            out[v, start:start + chunk.shape[2]] = resized.reshape(size, size, -1).transpose(2, 0, 1)
        out[v + VIEWS // 2] = out[v, :, :, ::-1]
    return out[..., None]


def _windows(x: np.ndarray, crop: int) -> np.ndarray:
    """(N, S, S) -> (10, N, S, S): each crop x crop window (and its mirror image) at the
    centre of a zero canvas, where the model's CenterCrop reads it."""
    n, size = x.shape[0], x.shape[1]
    if not 0 < crop <= size:
        raise ValueError(f"crop size {crop} does not fit {size}x{size} images")
    at = (size - crop) // 2  # keras.layers.CenterCrop's start
    out = np.zeros((VIEWS, n, size, size), dtype=x.dtype)
    for v, (top, left) in enumerate(_corners(size, crop)):
        window = x[:, top:top + crop, left:left + crop]
        out[v, :, at:at + crop, at:at + crop] = window
        out[v + VIEWS // 2, :, at:at + crop, at:at + crop] = window[:, :, ::-1]
    return out


def predict_averaged(predict, x: np.ndarray, crop_size: int = 0) -> np.ndarray:
    """Mean of `predict` (a function (M, S, S, 1) -> (M, C)) over the ten views of x."""
    views = ten_crop(x, crop_size=crop_size)
    n = views.shape[1]
    probs = np.asarray(predict(views.reshape(VIEWS * n, *views.shape[2:])))
    return probs.reshape(VIEWS, n, -1).mean(axis=0)


class TenCrop(Classifier):
    """A classifier whose predictions are the mean over the ten views of each image, at the
    inner classifier's own crop size; path, backend, sizes and class names are the inner one's."""

    def __init__(self, inner: Classifier):
        super().__init__(inner.path, inner.image_size, inner.num_outputs)
        self.inner, self.backend = inner, inner.backend
        self.crop_size, self.class_names = inner.crop_size, list(inner.class_names)

    def predict(self, pixels, batch_size: int = config.EVAL_BATCH_SIZE) -> np.ndarray:
        """Like the inner classifier's predict; the views of batch_size images at a time are held."""
        pixels = np.asarray(pixels)
        out = [predict_averaged(lambda views: self.inner.predict(views, batch_size), pixels[i:i + batch_size],
                                self.crop_size).astype(np.float32)
               for i in range(0, len(pixels), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_outputs), np.float32)
