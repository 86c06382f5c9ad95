"""Ten-crop test-time augmentation (scripts/tta.py), shared by evaluation and prediction."""

import numpy as np
import pytest
from PIL import Image

from fervgg import tta


def test_ten_crops_are_the_corners_and_centre_mirrored_and_resized():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (600, 48, 48, 1), dtype=np.uint8)  # > 512: resized in two chunks
    views = tta.ten_crop(x)
    assert views.shape == (10, 600, 48, 48, 1) and views.dtype == np.uint8
    c = tta.crop_side(48)
    assert c == 43
    corners = {0: (0, 0), 1: (0, 5), 2: (5, 0), 3: (5, 5), 4: (2, 2)}
    for v, (top, left) in corners.items():
        for i in (0, 599):
            crop = Image.fromarray(x[i, top:top + c, left:left + c, 0])
            expected = np.asarray(crop.resize((48, 48), Image.Resampling.BILINEAR), dtype=int)
            # OpenCV's and Pillow's bilinear differ by rounding and edge handling only.
            assert np.abs(views[v, i, :, :, 0].astype(int) - expected).mean() < 3
        np.testing.assert_array_equal(views[v + 5], views[v][:, :, ::-1])


def test_a_uniform_image_gives_ten_identical_views():
    x = np.full((3, 48, 48), 77, np.uint8)
    assert (tta.ten_crop(x) == 77).all()


def test_predictions_are_averaged_per_image():
    x = np.random.default_rng(1).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    calls = []

    def predict(batch):  # "probability" of class 0 = mean brightness of the view
        calls.append(batch.shape)
        m = batch.reshape(len(batch), -1).mean(axis=1) / 255.0
        return np.stack([m, 1 - m], axis=1)

    probs = tta.predict_averaged(predict, x)
    assert calls == [(40, 48, 48, 1)]
    views = tta.ten_crop(x)[..., 0]
    expected = views.reshape(10, 4, -1).mean(axis=2).mean(axis=0) / 255.0
    np.testing.assert_allclose(probs[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_description_names_the_crop(size):
    assert f"{tta.crop_side(size)}x{tta.crop_side(size)} crops" in tta.description(size)
