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


def test_a_crop_models_views_are_exactly_its_ten_windows_at_the_centre():
    """A model trained on random crop x crop windows reads its centre window (CenterCrop):
    each view holds one of the ten windows exactly where that layer reads, zeros elsewhere."""
    size, crop = 48, 40
    x = np.random.default_rng(2).integers(1, 256, (3, size, size, 1), dtype=np.uint8)
    views = tta.ten_crop(x, crop_size=crop)
    assert views.shape == (10, 3, size, size, 1) and views.dtype == np.uint8
    at = (size - crop) // 2  # keras.layers.CenterCrop's start
    far, mid = size - crop, (size - crop) // 2
    for v, (top, left) in enumerate([(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]):
        window = x[:, top:top + crop, left:left + crop, 0]
        for view, expected in ((views[v], window), (views[v + 5], window[:, :, ::-1])):
            np.testing.assert_array_equal(view[:, at:at + crop, at:at + crop, 0], expected)
            outside = view[..., 0].copy()
            outside[:, at:at + crop, at:at + crop] = 0
            assert not outside.any()
    assert "40x40 window" in tta.description(size, crop)


def test_a_crop_models_views_are_what_its_center_crop_layer_reads():
    import keras

    size, crop = 48, 37  # an odd margin: CenterCrop's rounding must match ours
    x = np.random.default_rng(3).integers(0, 256, (2, size, size, 1), dtype=np.uint8)
    views = tta.ten_crop(x, crop_size=crop)
    read = np.asarray(keras.layers.CenterCrop(crop, crop)(views.reshape(20, size, size, 1).astype("float32")))
    read = read.reshape(10, 2, crop, crop)
    far = size - crop
    np.testing.assert_array_equal(read[2], x[:, far:, :crop, 0])  # view 2: the bottom-left window
    np.testing.assert_array_equal(read[9], x[:, far // 2:far // 2 + crop, far // 2:far // 2 + crop, 0][:, :, ::-1])


def test_ten_crop_classifier_averages_at_the_inner_crop_size():
    from fervgg.classifiers import Classifier

    class Brightness(Classifier):  # "probability" of class 0 = mean brightness of what it is shown
        def _predict_batch(self, batch):
            m = batch.reshape(len(batch), -1).mean(axis=1) / 255.0
            return np.stack([m, 1 - m], axis=1).astype(np.float32)

    inner = Brightness("m.tflite", 48, 2)
    inner.crop_size, inner.class_names = 40, ["a", "b"]
    wrapped = tta.TenCrop(inner)
    assert isinstance(wrapped, Classifier) and wrapped.class_names == ["a", "b"] and wrapped.crop_size == 40
    x = np.random.default_rng(4).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    expected = tta.ten_crop(x, crop_size=40)[..., 0].reshape(10, 5, -1).mean(axis=2).mean(axis=0) / 255.0
    np.testing.assert_allclose(wrapped.predict(x, batch_size=2)[:, 0], expected, rtol=1e-5)
