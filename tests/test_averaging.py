"""scripts/average_models.py and fervgg.averaging: the mean of checkpoints, batch norm
re-measured, the sidecar, and bad input as one line."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import script
from fervgg import averaging, config
from fervgg.artifacts import write_dataset
from fervgg.common import FervggError, atomic_write_json

SIZE = 8
CLASSES = ["a", "b", "c"]


def small_model(seed: int, filters: int = 4):
    """Conv, batch norm, pooling, dropout, softmax: every kind of weight a checkpoint holds."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(filters, 3, name="conv")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.5)(x)
    model = keras.Model(inputs, layers.Dense(len(CLASSES), activation="softmax")(x))
    bn = model.get_layer("bn")
    rng = np.random.default_rng(seed)
    bn.moving_mean.assign(rng.normal(0, 1, filters).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2, filters).astype(np.float32))
    return model


def saved(model, path: Path, sidecar: bool = True) -> Path:
    model.save(path)
    if sidecar:
        atomic_write_json(path.with_suffix(".json"), {"model": path.name, "class_names": CLASSES,
                                                      "image_size": SIZE, "epochs": 3})
    return path


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 1)).astype(np.float32)


def test_the_average_is_the_mean_of_every_weight_with_a_sidecar(tmp_path):
    from fervgg.emotion_model import load_model

    models = [small_model(s) for s in (1, 2, 3)]
    paths = [saved(m, tmp_path / f"epoch{i}.keras", sidecar=i == 3) for i, m in enumerate(models, 1)]
    out = averaging.average(averaging.AverageSettings(paths, tmp_path / "avg.keras"), notes=lambda t: None)
    mean = load_model(out)
    for got, *each in zip(mean.get_weights(), *(m.get_weights() for m in models)):
        np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-6, atol=1e-7)
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["class_names"] == CLASSES and info["epochs"] == 3 and info["model"] == "avg.keras"
    assert [m["file"] for m in info["averaged_from"]["models"]] == ["epoch1.keras", "epoch2.keras", "epoch3.keras"]
    assert info["averaged_from"]["batch_norm"] == "averaged with the weights"
    x = pixels(4)
    assert not np.allclose(mean.predict_on_batch(x), models[0].predict_on_batch(x))


def test_batch_norm_is_re_measured_on_training_images(tmp_path):
    """With bn_data, each moving mean/variance is the mean over batches of the batch statistics
    of the layer's input, computed here directly from the averaged network's conv output."""
    import keras

    from fervgg.emotion_model import load_model

    data = tmp_path / "data"
    images = {s: pixels(n, i).astype(np.uint8)[..., 0] for i, (s, n) in
              enumerate(zip(config.SPLITS, (40, 6, 6)), start=5)}
    labels = {s: np.arange(len(x)) % len(CLASSES) for s, x in images.items()}
    write_dataset(data, images, labels, lambda sha: {"class_names": CLASSES, "image_size": SIZE, "sha256": sha,
                                                    "counts": {s: len(x) for s, x in images.items()}})
    paths = [saved(small_model(s), tmp_path / f"e{s}.keras") for s in (1, 2)]
    out = averaging.average(averaging.AverageSettings(paths, tmp_path / "avg.keras", bn_data=data, bn_images=32,
                                                      batch_size=16, seed=0), notes=lambda t: None)
    model = load_model(out)
    chosen = np.sort(np.random.default_rng(0).permutation(40)[:32])
    x = images["train"][chosen][..., None].astype(np.float32)
    conv = np.asarray(keras.Model(model.input, model.get_layer("conv").output).predict_on_batch(x))
    batches = [conv[i:i + 16].reshape(-1, conv.shape[-1]) for i in (0, 16)]
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var(0) for b in batches], 0), rtol=1e-3,
                               atol=1e-5)
    assert bn.momentum == 0.99  # restored after measuring
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["averaged_from"]["batch_norm"].startswith("re-measured on 32 training images")


def test_bad_input_is_one_line_before_any_work(tmp_path, capsys):
    average_models = script("average_models")
    a = saved(small_model(1), tmp_path / "a.keras")
    b = saved(small_model(2, filters=6), tmp_path / "b.keras")
    no_side = saved(small_model(3), tmp_path / "c.keras", sidecar=False)
    with pytest.raises(FervggError, match="same architecture"):
        averaging.average(averaging.AverageSettings([a, b], tmp_path / "x.keras"), notes=lambda t: None)
    with pytest.raises(FervggError, match="c.json is missing: give `sidecar`"):
        averaging.average(averaging.AverageSettings([a, no_side], tmp_path / "x.keras"), notes=lambda t: None)
    for settings, words in ((dict(models=[a]), "at least two"), (dict(models=[a, a]), "given twice"),
                            (dict(models=[a, b], out=tmp_path / "x.h5"), ".keras file"),
                            (dict(models=[a, b], out=a), "is one of the `models`"),
                            (dict(models=[a, tmp_path / "b.tflite"]), "b.tflite is not a Keras checkpoint")):
        with pytest.raises(FervggError, match=words):
            averaging.AverageSettings(**{"out": tmp_path / "x.keras", **settings})
    assert not (tmp_path / "x.keras").exists()
    with pytest.raises(SystemExit) as usage:
        average_models.parse_args(["--models", str(a), "--out", str(tmp_path / "y.keras")])
    assert usage.value.code == 2 and "--models: give at least two" in capsys.readouterr().err
    with pytest.raises(SystemExit) as missing:
        script("cli").run_cli(lambda: average_models.main(["--models", str(a), str(tmp_path / "none.keras"),
                                                            "--out", str(tmp_path / "y.keras")]))
    err = capsys.readouterr().err
    assert missing.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert "--models" in err and "none.keras not found" in err  # not another script's --model


def test_a_kept_epochs_folder_gives_its_checkpoints_in_training_order(tmp_path, capsys):
    """`--models models/epochs/RUN --last N`: epoch 10 comes after epoch 9 (a file listing puts
    it first); the sidecar comes from --sidecar."""
    kept = tmp_path / "epochs" / "run"
    kept.mkdir(parents=True)
    model = small_model(1)
    for phase, epoch in ((1, 1), (1, 2), (1, 9), (1, 10), (2, 1)):
        model.save(kept / f"phase{phase}-epoch{epoch}.keras")
    (kept / "notes.txt").write_text("not a checkpoint")
    best = saved(small_model(1), tmp_path / "best_model.keras")
    assert [p.name for p in averaging.AverageSettings([kept], tmp_path / "x.keras").models] == [
        "phase1-epoch1.keras", "phase1-epoch2.keras", "phase1-epoch9.keras", "phase1-epoch10.keras",
        "phase2-epoch1.keras"]
    assert script("average_models").main(["--models", str(kept), "--last", "3", "--sidecar", str(best),
                                          "--out", str(tmp_path / "avg.keras")]) == 0
    info = json.loads((tmp_path / "avg.json").read_text())
    assert [m["file"] for m in info["averaged_from"]["models"]] == [
        "phase1-epoch9.keras", "phase1-epoch10.keras", "phase2-epoch1.keras"]
    for settings, words in ((dict(models=[kept], last=6), "there are only 5 checkpoints"),
                            (dict(models=[kept], last=1), "at least 2"),
                            (dict(models=[tmp_path / "epochs"]), "holds no phaseP-epochE.keras checkpoints")):
        with pytest.raises(FervggError, match=words):
            averaging.AverageSettings(**{"out": tmp_path / "x.keras", **settings})


def test_help_names_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        script("average_models").parse_args(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert all(flag in out for flag in ("--models", "--out", "--sidecar", "--bn-data", "--bn-images", "--batch-size"))
