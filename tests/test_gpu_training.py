"""bench/gpu_training: the data packed for the GPU machine comes back bit for bit, and a weight set
returned from it (float16, the model's weight order) becomes a .keras model of ours that predicts
what the weights say. (The training itself runs under Keras's JAX backend on a lent GPU: not here.)"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from fervgg import config, emotion_model
from fervgg.artifacts import write_dataset

TOOLS = Path(__file__).resolve().parents[1] / "bench" / "gpu_training"


def tool(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_training_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_dataset(folder: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(3)
    images = {s: rng.integers(0, 256, (n, 48, 48), dtype=np.uint8) for s in config.SPLITS}
    labels = {s: rng.integers(0, 7, n) for s in config.SPLITS}
    write_dataset(folder, images, labels, lambda sha: {"class_names": list(config.CLASS_NAMES), "image_size": 48,
                                                       "sha256": sha, "counts": {s: n for s in images}})
    return folder


def test_packed_training_images_come_back_bit_for_bit_and_damage_is_caught(tmp_path):
    gpu_train = tool("gpu_train")
    data = tiny_dataset(tmp_path / "data")
    gpu_train.pack_data(str(data), str(tmp_path / "packed"))
    x_train, y_train, x_val, y_val = gpu_train.load_data(str(tmp_path / "packed"))
    np.testing.assert_array_equal(x_train, np.load(data / "X_train.npy"))
    np.testing.assert_array_equal(y_train, np.load(data / "y_train.npy"))
    np.testing.assert_array_equal(x_val, np.load(data / "X_val.npy"))
    info = json.loads((tmp_path / "packed" / "X_train.json").read_text())
    info["sha256"] = "0" * 64
    (tmp_path / "packed" / "X_train.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit, match="damaged in transit"):
        gpu_train.load_data(str(tmp_path / "packed"))


@pytest.mark.parametrize("pooled", [None, "1235"])  # None: a record from before --pooled-blocks
def test_a_returned_weight_set_becomes_a_model_of_ours(tmp_path, monkeypatch, pooled):
    collect, importer = tool("collect"), tool("import_candidate")
    data = tiny_dataset(tmp_path / "data")
    layout = tuple(int(b) for b in pooled) if pooled else None
    trained = emotion_model.build_model(7, 48, "none", 256, 0.2, 40, layout)  # stands in for the GPU's model
    rng = np.random.default_rng(0)
    trained.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in trained.get_weights()])
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    blob = b"".join(np.asarray(w, np.float16).tobytes() for w in trained.get_weights())
    (work / "A-last.f16").write_bytes(blob)
    args = {"dropout": 0.2, "crop": 40, "erasing": 0.5, "precision": "mixed_bfloat16"}
    if pooled:
        args["pooled_blocks"] = pooled
    record = {"run": "A", "args": args,
              "devices": ["cuda:0"], "versions": {"jax": "0.0"}, "cpu": "test", "epochs": [{"epoch": 1}],
              "candidates": {"last": {"val_accuracy": 0.5, "val_accuracy_ten_crop": 0.6}},
              "weights_layout": [[w.path, list(w.shape)] for w in trained.weights]}
    (work / "A.json").write_text(json.dumps(record))
    monkeypatch.setattr(collect, "PART", len(blob) // 3)  # several parts, as over the 16 MiB limit
    collect.main(str(work), str(out), 1)
    assert len(list(out.glob("c0-A-last.part*"))) == 4
    importer.main(out, 0, tmp_path / "model.keras", data)

    model = emotion_model.load_model(tmp_path / "model.keras")
    assert emotion_model.pooled_blocks_of(model.get_layer("vgg16")) == (layout or emotion_model.ALL_POOLS)
    x = np.random.default_rng(1).integers(0, 256, (4, 48, 48, 1)).astype(np.float32)
    expected = emotion_model.with_policy(trained, "float32")
    expected.set_weights([np.asarray(w, np.float16).astype(np.float32) for w in trained.get_weights()])
    np.testing.assert_allclose(model.predict(x, verbose=0), expected.predict(x, verbose=0), atol=1e-5)
    info = emotion_model.model_info(tmp_path / "model.keras")
    assert info.crop_size == 40 and info.class_names == list(config.CLASS_NAMES)
    assert "gpu_train.py" in info.sidecar["config"]["trainer"]


def test_distillation_targets_mix_the_teachers_and_the_labels():
    gpu_train = tool("gpu_train")
    y = np.array([0, 2, 1])
    np.testing.assert_array_equal(gpu_train.training_targets(y, 3), np.eye(3)[y])
    teacher = np.array([[2, 1, 1], [0, 0, 1], [1, 1, 0]], np.float32)  # rows need not sum to 1
    got = gpu_train.training_targets(y, 3, teacher, 0.75)
    np.testing.assert_allclose(got, 0.75 * teacher / teacher.sum(1, keepdims=True) + 0.25 * np.eye(3)[y])
    np.testing.assert_allclose(got.sum(1), 1, rtol=1e-6)
    hot = np.array([[0.98, 0.015, 0.005]] * 3, np.float32)
    soft = gpu_train.training_targets(y, 3, hot, 1.0, temperature=4.0)
    expected = hot[0] ** 0.25 / (hot[0] ** 0.25).sum()
    np.testing.assert_allclose(soft[0], expected, rtol=1e-5)
    assert soft[0, 1] > soft[0, 2] > 0.1 and soft[0, 0] < 0.7  # the order kept, the near misses brought out
    for bad in (teacher[:2], -teacher, teacher * np.nan):
        with pytest.raises(SystemExit, match="teacher"):
            gpu_train.training_targets(y, 3, bad, 0.5)


def test_importing_the_trainer_leaves_the_keras_backend_alone(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    tool("gpu_train")
    assert "KERAS_BACKEND" not in os.environ


def test_a_teacher_is_the_mean_of_its_members_mirror_averaged_probabilities(tmp_path):
    """`probs` (a .keras model of ours, here) gives each training image's probabilities averaged
    with its mirror image's; `teacher` averages members of one shape and refuses others."""
    gpu_train = tool("gpu_train")
    data = tiny_dataset(tmp_path / "data")
    model = emotion_model.build_model(7, 48, "none", 16, 0.0, 40)
    model.save(tmp_path / "m.keras")
    gpu_train.keras_train_probs(str(tmp_path / "m.keras"), str(data), str(tmp_path / "a.npy"))
    x = np.load(data / "X_train.npy").astype(np.float32)[..., None]
    expected = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    a = np.load(tmp_path / "a.npy")
    np.testing.assert_allclose(a, expected, atol=1e-5)

    b = np.full_like(a, 1 / 7)
    np.save(tmp_path / "b.npy", b)
    gpu_train.average_teachers(str(tmp_path / "t.npy"), [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), (a + b) / 2, atol=1e-6)
    np.save(tmp_path / "c.npy", b[:3])
    with pytest.raises(SystemExit, match="one shape"):
        gpu_train.average_teachers(str(tmp_path / "t2.npy"), [str(tmp_path / "a.npy"), str(tmp_path / "c.npy")])
    assert not (tmp_path / "t2.npy").exists()
