"""data_processing.py on the real FER2013 in ../shared (skipped when it is absent)."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import script

data_processing = script("data_processing")



ROOT = Path(__file__).resolve().parent.parent
FER = ROOT.parent / "shared" / "fer2013"

# Per-class counts from ../shared/README.md.
TRAIN = {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "neutral": 4965, "sad": 4830,
         "surprise": 3171}
TEST = {"angry": 467, "disgust": 56, "fear": 496, "happy": 895, "neutral": 607, "sad": 653, "surprise": 415}


@pytest.mark.skipif(not FER.is_dir(), reason="../shared/fer2013 is not present")
def test_fer2013_counts_dtype_and_duplicate_audit(tmp_path):
    assert data_processing.main(["--data-dir", str(FER), "--out-dir", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    counts = meta["counts"]
    for name, n in TRAIN.items():
        assert counts["train"][name] + counts["val"][name] == n
    assert counts["test"] == TEST
    # 28,709 includes both images named Training_52789098.jpg (two class folders): paths, not names.
    assert meta["totals"]["train"] + meta["totals"]["val"] == 28709
    assert meta["totals"]["test"] == 3589
    for split in ("train", "val", "test"):
        x = np.load(tmp_path / f"X_{split}.npy", allow_pickle=False)
        assert x.dtype == np.uint8 and x.shape[1:] == (48, 48, 1)
    within = meta["duplicates"]["within_train_folder"]
    assert within["extra_copies"] == 1236  # measured figure in ../shared/README.md
    assert within["groups_with_conflicting_labels"] == 39
    assert meta["duplicates"]["across_splits"]["train-test"]["distinct_images_shared"] > 0
    assert meta["duplicates"]["across_splits"]["train-val"]["distinct_images_shared"] == 0
    assert meta["bad_files"] == []
    assert len(meta["near_blank_images"]) >= 10


def test_the_shipped_int8_file_is_the_default_and_belongs_to_the_shipped_keras():
    """Prediction runs models/pretrained/fer2013_vgg16.int8.tflite: it is found first, and its
    sidecar record names the committed .keras by checksum (a git checkout's file times say nothing)."""
    from fervgg import config
    from fervgg.classifiers import find_model, int8_path
    from fervgg.common import sha256_file

    shipped = Path(config.PRETRAINED_MODEL)
    record = json.loads(shipped.with_suffix(".json").read_text())["litert_int8_export"]
    assert record["file"] == int8_path(shipped).name and record["keras_sha256"] == sha256_file(shipped)
    measured = record["accuracy"]
    for view in ("one_view", "ten_crop"):
        assert measured["full-integer"][view] >= measured["float"][view] - record["max_loss"]
    assert tuple(find_model(shipped)) == ("litert", int8_path(shipped), shipped)


@pytest.mark.skipif(not FER.is_dir(), reason="../shared/fer2013 is not present")
def test_the_shipped_int8_file_reads_fer2013_faces_as_the_float_file_does():
    from PIL import Image

    from fervgg import config
    from fervgg.classifiers import int8_path
    from fervgg.litert_runtime import LiteRTClassifier

    shipped = Path(config.PRETRAINED_MODEL)
    if not shipped.with_suffix(".tflite").is_file():
        pytest.skip("no float .tflite: `make install` builds it")
    files = sorted((FER / "test").glob("*/*.jpg"))[::12]  # 300 faces of every class
    x = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])[..., None]
    y = np.array([list(TEST).index(f.parent.name) for f in files])
    int8 = LiteRTClassifier(int8_path(shipped)).predict(x)
    float_ = LiteRTClassifier(shipped.with_suffix(".tflite")).predict(x)
    np.testing.assert_allclose(int8.sum(1), 1, atol=1e-5)
    assert (int8.argmax(1) == float_.argmax(1)).mean() >= 0.95
    assert (int8.argmax(1) == y).mean() >= (float_.argmax(1) == y).mean() - 0.02
    assert (int8.argmax(1) == y).mean() > 0.6
