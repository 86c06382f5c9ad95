"""scripts/evaluate_model.py: metrics against scikit-learn, PNGs, TensorBoard, TTA, image
folders, model comparison, and one-line errors for models or data that do not fit.

Tiny everything: 4 classes of 32x32 images (~40 files), one untrained VGG16 built by
emotion_model.build_model for the module, plus two very small Keras models for the
comparison and mismatch cases. Most runs call main() in-process; three go through a
subprocess to check exit codes and one-line errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import script
from PIL import Image


from fervgg.common import FervggError

data_processing = script("data_processing")
evaluate_model = script("evaluate_model")

ROOT = Path(__file__).resolve().parent.parent

# Keras's model.save under NumPy 2 (not this code): "__array__ implementation doesn't accept a copy keyword".
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 32
CLASSES = ["angry", "happy", "sad", "surprise"]
SCRIPT = str(ROOT / "scripts" / "evaluate_model.py")


# ---------------------------------------------------------------- fixtures

def face(label: int, index: int) -> np.ndarray:
    """Random pixels with a class-dependent bright band, so images differ by class."""
    rng = np.random.default_rng(1000 * label + index)
    img = rng.integers(0, 120, (SIZE, SIZE), dtype=np.uint8)
    img[4 + 6 * label: 9 + 6 * label, :] = 230
    return img


def write_folder(folder: Path, per_class: int, start: int = 0, classes=CLASSES) -> None:
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            Image.fromarray(face(label, i)).save(folder / name / f"{name}_{i:03d}.png")


def save_with_sidecar(model, path: Path, class_names: list[str]) -> Path:
    model.save(path)
    # As emotion_model.write_sidecar writes it (the fields evaluation reads).
    path.with_suffix(".json").write_text(json.dumps({"model": path.name, "class_names": class_names,
                                                     "image_size": SIZE}))
    return path


def spread_predictions(model, x: np.ndarray, seed: int = 0) -> None:
    """Make an untrained model's predictions depend on the image.

    An untrained VGG16's pooled features hardly differ between images, so its argmax is the
    same class for all of them; a random output layer centred and scaled on the features of
    `x` gives varied predictions and confidences (a non-trivial confusion matrix).
    """
    import keras

    head = model.get_layer("emotion")
    features = keras.Model(model.input, head.input).predict(x.astype(np.float32), verbose=0)
    n_classes = head.kernel.shape[-1]
    w = np.random.default_rng(seed).normal(size=(features.shape[1], n_classes))
    w *= 2.0 / ((features - features.mean(axis=0)) @ w).std()
    head.kernel.assign(w.astype(np.float32))
    head.bias.assign((-features.mean(axis=0) @ w).astype(np.float32))


def small_model(n_classes: int, seed: int):
    """A very small Keras model with the pipeline's contract: raw pixels in, softmax out."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 1)),
        layers.Rescaling(1 / 127.5, offset=-1),
        layers.Conv2D(4, 3, activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(n_classes, activation="softmax"),
    ])


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Image folder -> arrays (data_processing.main) and the models, built once."""
    import keras

    from fervgg.emotion_model import build_model

    base = tmp_path_factory.mktemp("eval")
    images = base / "images"
    write_folder(images / "train", 6)
    write_folder(images / "test", 4, start=100)
    data_processing.main(["--data-dir", str(images), "--out-dir", str(base / "arrays"),
                          "--val-fraction", "0.2", "--workers", "1", "--image-size", str(SIZE)])
    models = base / "models"
    models.mkdir()
    keras.utils.set_random_seed(7)
    vgg = build_model(len(CLASSES), SIZE, "none", dense_units=64)
    spread_predictions(vgg, np.concatenate([np.load(base / "arrays" / f"X_{s}.npy") for s in ("train", "val", "test")]))
    save_with_sidecar(vgg, models / "best_model.keras", CLASSES)
    save_with_sidecar(small_model(len(CLASSES), 3), models / "small.keras", CLASSES)
    save_with_sidecar(small_model(3, 4), models / "three_classes.keras", CLASSES[:3])
    return {"base": base, "images": images, "arrays": base / "arrays", "models": models}


def run_main(env: dict, out: Path, *extra: str) -> int:
    return evaluate_model.main(["--models-dir", str(env["models"]), "--data-dir", str(env["arrays"]),
                                "--out-dir", str(out / "eval"), "--logs-dir", str(out / "logs"), *extra])


@pytest.fixture(scope="module")
def tta_run(env, tmp_path_factory) -> dict:
    """The default model on the test split, with --tta (one run shared by several tests)."""
    import io
    from contextlib import redirect_stdout

    out = tmp_path_factory.mktemp("tta_run")
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert run_main(env, out, "--tta") == 0
    folder = out / "eval" / "best_model-test"
    return {"out": out, "folder": folder, "stdout": buf.getvalue(),
            "metrics": json.loads((folder / "metrics.json").read_text())}


def predict_independently(model_path: Path, x: np.ndarray) -> np.ndarray:
    import keras

    model = keras.models.load_model(model_path, compile=False)
    return model.predict(x.astype(np.float32), batch_size=8, verbose=0)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------- metrics and outputs

def test_metrics_match_scikit_learn(env, tta_run):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    x = np.load(env["arrays"] / "X_test.npy")
    y = np.load(env["arrays"] / "y_test.npy")
    pred = predict_independently(env["models"] / "best_model.keras", x).argmax(axis=1)
    m = tta_run["metrics"]["metrics"]
    assert m["n_images"] == len(y) == 16
    assert m["class_names"] == CLASSES
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=range(4), zero_division=0))
    recalls = recall_score(y, pred, average=None, labels=range(4), zero_division=0)
    assert [m["per_class"][c]["recall"] for c in CLASSES] == pytest.approx(recalls)
    assert [m["per_class"][c]["support"] for c in CLASSES] == [4, 4, 4, 4]
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=range(4)).tolist()
    assert 0 <= m["balanced_accuracy"] <= 1 and "weighted_avg" in m and "macro_avg" in m


def test_metrics_json_records_model_settings_and_both_tta_results(env, tta_run):
    from fervgg.common import sha256_file

    doc = tta_run["metrics"]
    model = env["models"] / "best_model.keras"
    assert doc["model"]["path"] == str(model.resolve())
    assert doc["model"]["sha256"] == sha256_file(model)
    assert doc["settings"]["tta"] is True and doc["settings"]["split"] == "test"
    assert doc["settings"]["batch_size"] == evaluate_model.config.EVAL_BATCH_SIZE
    assert doc["data"]["source"] == "preprocessed arrays"
    assert doc["tta"]["n_images"] == 16 and 0 <= doc["tta"]["accuracy"] <= 1
    assert set(doc["tta"]) == set(doc["metrics"])
    # Printed side by side: plain and TTA columns in one table.
    out = tta_run["stdout"]
    assert "plain" in out and "TTA" in out and "balanced accuracy" in out
    acc_line = next(line for line in out.splitlines() if line.startswith("accuracy "))
    assert f"{doc['metrics']['accuracy']:.4f}" in acc_line and f"{doc['tta']['accuracy']:.4f}" in acc_line


def test_pngs_and_tensorboard_are_written(tta_run):
    folder = tta_run["folder"]
    for name in ("confusion_matrix.png", "mistakes.png"):
        with Image.open(folder / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 100
    events = list((tta_run["out"] / "logs" / "eval" / "best_model-test").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "confusion_matrix" in tags["tensors"] + tags["images"]


def test_the_probabilities_are_written_and_the_train_split_makes_a_teacher(env, tta_run, tmp_path):
    """probabilities.npy (and _tta with --tta): the model's outputs, row by row; on --split train
    they are a teacher model_training.py --teacher accepts; a run without --tta leaves no stale
    TTA file."""
    from fervgg.artifacts import load_teachers

    x = np.load(env["arrays"] / "X_test.npy")
    probs = np.load(tta_run["folder"] / "probabilities.npy", allow_pickle=False)
    tta = np.load(tta_run["folder"] / "probabilities_tta.npy", allow_pickle=False)
    assert probs.dtype == tta.dtype == np.float32 and probs.shape == tta.shape == (len(x), len(CLASSES))
    np.testing.assert_allclose(probs, predict_independently(env["models"] / "best_model.keras", x), atol=1e-5)
    assert not np.allclose(probs, tta)

    assert run_main(env, tmp_path, "--split", "train") == 0
    folder = tmp_path / "eval" / "best_model-train"
    n_train = len(np.load(env["arrays"] / "y_train.npy"))
    teacher = load_teachers([folder / "probabilities.npy"], n_train, len(CLASSES))
    assert teacher.shape == (n_train, len(CLASSES)) and json.loads((folder / "metrics.json").read_text())[
        "settings"]["split"] == "train"
    stale = tmp_path / "eval" / "best_model-test"
    stale.mkdir(parents=True)
    (stale / "probabilities_tta.npy").write_bytes(b"old")
    assert run_main(env, tmp_path) == 0
    assert (stale / "probabilities.npy").is_file() and not (stale / "probabilities_tta.npy").exists()


def test_image_folder_matches_arrays_and_skips_bad_and_unknown(env, tmp_path, capsys):
    # The test/ image folder, with a capitalised class folder, an unknown folder, a corrupt
    # file and a loose file: same images as X_test.npy, so the same metrics.
    folder = tmp_path / "imgs"
    shutil.copytree(env["images"] / "test", folder)
    (folder / "happy").rename(folder / "Happy")
    (folder / "contempt").mkdir()
    Image.fromarray(face(0, 999)).save(folder / "contempt" / "x.png")
    (folder / "sad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("hello")
    assert evaluate_model.main(["--models-dir", str(env["models"]), "--images", str(folder),
                                "--out-dir", str(tmp_path / "eval"), "--logs-dir", str(tmp_path / "logs")]) == 0
    err = capsys.readouterr().err
    assert "contempt" in err and "1 unreadable file" in err and "broken.png" in err
    doc = json.loads((tmp_path / "eval" / "best_model-images" / "metrics.json").read_text())
    assert doc["data"]["source"] == "image folder"
    assert doc["data"]["folders"]["Happy"] == "happy"
    assert doc["data"]["skipped_folders"] == {"contempt": 1}
    assert [b["path"].endswith("broken.png") for b in doc["data"]["bad_files"]] == [True]
    x = np.load(env["arrays"] / "X_test.npy")
    y = np.load(env["arrays"] / "y_test.npy")
    from sklearn.metrics import accuracy_score, confusion_matrix

    pred = predict_independently(env["models"] / "best_model.keras", x).argmax(axis=1)
    m = doc["metrics"]
    assert m["n_images"] == 16
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=range(4)).tolist()


def test_no_matching_folder_is_a_clear_error(env, tmp_path):
    with pytest.raises(FervggError, match="did you mean `images`"):
        evaluate_model.main(["--models-dir", str(env["models"]), "--images", str(env["images"]),
                             "--out-dir", str(tmp_path)])


def test_two_models_and_both_splits_give_one_comparison(env, tmp_path, capsys):
    models = env["models"]
    assert run_main(env, tmp_path, "--model", str(models / "best_model.keras"), str(models / "small.keras"),
                    "--split", "both", "--mistakes", "4") == 0
    out = capsys.readouterr().out
    table = out.split("== comparison ==")[1]
    assert table.count("best_model.keras") == 2 and table.count("small.keras") == 2
    assert "balanced acc" in table and "macro F1" in table
    rows = json.loads((tmp_path / "eval" / "comparison.json").read_text())["results"]
    assert [(Path(r["model"]).name, r["split"]) for r in rows] == [
        ("best_model.keras", "val"), ("best_model.keras", "test"), ("small.keras", "val"), ("small.keras", "test")]
    for r in rows:
        doc = json.loads(Path(r["metrics_file"]).read_text())
        assert doc["metrics"]["accuracy"] == pytest.approx(r["accuracy"])
        assert len(doc["most_confident_mistakes"]) <= 4


# ---------------------------------------------------------------- refusals and errors

def test_sidecar_class_names_that_differ_are_refused(env, tmp_path):
    model = tmp_path / "renamed.keras"
    shutil.copy(env["models"] / "small.keras", model)
    model.with_suffix(".json").write_text(json.dumps({"class_names": CLASSES[::-1], "image_size": SIZE}))
    with pytest.raises(FervggError, match="trained on classes"):
        run_main(env, tmp_path, "--model", str(model))


def test_a_misfit_model_among_several_fails_before_any_evaluation(env, tmp_path):
    models = env["models"]
    with pytest.raises(FervggError, match="3 outputs"):
        run_main(env, tmp_path, "--model", str(models / "small.keras"), str(models / "three_classes.keras"))
    assert not (tmp_path / "eval").exists()


def test_model_without_sidecar_uses_the_arrays_classes_with_a_warning(env, tmp_path, capsys):
    model = tmp_path / "bare.keras"
    shutil.copy(env["models"] / "small.keras", model)
    assert run_main(env, tmp_path, "--model", str(model), "--mistakes", "0") == 0
    assert "assuming the model's 4 outputs are the data's classes" in capsys.readouterr().err
    folder = tmp_path / "eval" / "bare-test"
    doc = json.loads((folder / "metrics.json").read_text())
    assert doc["metrics"]["class_names"] == CLASSES and doc["model"]["sidecar"] is None
    assert not (folder / "mistakes.png").exists() and (folder / "confusion_matrix.png").exists()


def test_corrupt_arrays_are_refused_before_loading_a_model(env, tmp_path):
    arrays = tmp_path / "arrays"
    shutil.copytree(env["arrays"], arrays)
    with open(arrays / "X_test.npy", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    with pytest.raises(FervggError, match="checksum"):
        evaluate_model.main(["--models-dir", str(env["models"]), "--data-dir", str(arrays),
                             "--out-dir", str(tmp_path / "eval")])


def test_help_mentions_both_data_sources(capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate_model.parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--images" in text and "--data-dir" in text and "--tta" in text


def test_model_with_other_class_count_is_refused_in_one_line(env, tmp_path):
    proc = cli("--model", str(env["models"] / "three_classes.keras"), "--data-dir", str(env["arrays"]),
               "--out-dir", str(tmp_path / "eval"), "--logs-dir", str(tmp_path / "logs"))
    assert_one_line_error(proc, "3 outputs", f"the dataset in {env['arrays']} has 4 classes")
    assert not (tmp_path / "eval").exists()


def test_missing_model_is_one_line(env, tmp_path):
    proc = cli("--models-dir", str(tmp_path / "nothing"), "--data-dir", str(env["arrays"]))
    assert_one_line_error(proc, "model not found", "best_model.keras")


def test_missing_arrays_are_one_line(env, tmp_path):
    proc = cli("--models-dir", str(env["models"]), "--data-dir", str(tmp_path / "no_arrays"))
    assert_one_line_error(proc, "preprocessed data folder not found")


def test_a_folder_as_model_is_named_as_a_folder(env, tmp_path):
    proc = cli("--model", str(env["models"]), "--data-dir", str(env["arrays"]),
               "--out-dir", str(tmp_path / "eval"), "--logs-dir", str(tmp_path / "logs"))
    assert_one_line_error(proc, "is a folder: pass the model file in it")


# ---------------------------------------------------------------- LiteRT and crop models

def test_the_tflite_export_measures_like_the_keras_model(env, tmp_path, capsys):
    """evaluate_model.py --model X.tflite runs LiteRT, as prediction does: same metrics as
    the .keras it came from, in its own folder (<stem>-litert-<split>)."""
    export_model = script("export_model")
    model = tmp_path / "best_model.keras"
    for suffix in (".keras", ".json"):
        shutil.copy(env["models"] / f"best_model{suffix}", model.with_suffix(suffix))
    assert export_model.main(["--model", str(model), "--check-samples", "2"]) == 0
    assert run_main(env, tmp_path, "--model", str(model), str(model.with_suffix(".tflite")), "--tta") == 0
    capsys.readouterr()
    docs = [json.loads((tmp_path / "eval" / f"{tag}-test" / "metrics.json").read_text())
            for tag in ("best_model", "best_model-litert")]
    assert [d["model"]["backend"] for d in docs] == ["keras", "litert"]
    keras_doc, lite_doc = docs
    for key in ("metrics", "tta"):
        assert lite_doc[key]["accuracy"] == pytest.approx(keras_doc[key]["accuracy"], abs=1e-9)
        assert lite_doc[key]["confusion_matrix"] == keras_doc[key]["confusion_matrix"]
    confidences = [[m["confidence"] for m in d["most_confident_mistakes"]] for d in docs]
    np.testing.assert_allclose(confidences[1], confidences[0], atol=1e-4)


def test_a_crop_model_is_evaluated_with_ten_windows_at_its_crop_size(env, tmp_path, capsys):
    """A model trained on random 40x40 crops (it reads the centre 40x40 of a 48x48 input):
    its TTA views are the ten 40x40 windows, not resized crops."""
    import keras

    from fervgg import tta
    from fervgg.emotion_model import build_model

    arrays = tmp_path / "arrays48"
    data_processing.main(["--data-dir", str(env["images"]), "--out-dir", str(arrays), "--val-fraction", "0.2",
                          "--workers", "1", "--image-size", "48"])
    keras.utils.set_random_seed(11)
    model = build_model(len(CLASSES), 48, "none", dense_units=16, crop_size=40)
    x = np.load(arrays / "X_test.npy")
    spread_predictions(model, x)
    path = save_with_sidecar(model, tmp_path / "crop_model.keras", CLASSES)
    side = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**side, "image_size": 48, "crop_size": 40}))
    assert evaluate_model.main(["--model", str(path), "--data-dir", str(arrays), "--tta", "--out-dir",
                                str(tmp_path / "eval"), "--logs-dir", str(tmp_path / "logs")]) == 0
    doc = json.loads((tmp_path / "eval" / "crop_model-test" / "metrics.json").read_text())
    assert doc["model"]["crop_size"] == 40 and "40x40 window" in doc["settings"]["tta_views"]
    assert "40x40" in capsys.readouterr().out
    views = tta.ten_crop(x, crop_size=40)
    probs = np.asarray(model.predict(views.reshape(-1, 48, 48, 1).astype(np.float32), verbose=0))
    pred = probs.reshape(10, len(x), -1).mean(axis=0).argmax(axis=1)
    from sklearn.metrics import confusion_matrix

    y = np.load(arrays / "y_test.npy")
    assert doc["tta"]["confusion_matrix"] == confusion_matrix(y, pred, labels=range(4)).tolist()


def test_thousands_of_unknown_folders_are_counted_with_a_few_shown(tmp_path, capsys):
    """Issue 21, point 19: one short warning line, not one 35 KB line."""
    from fervgg.folders import ImageFolder

    root = tmp_path / "images"
    write_folder(root, per_class=1)
    for i in range(3000):
        (root / f"unknown_{i:04d}").mkdir()
        (root / f"unknown_{i:04d}" / "x.png").write_bytes(b"")
    ImageFolder(root, workers=1).for_model(CLASSES, 48)
    lines = [line for line in capsys.readouterr().err.splitlines() if "match no class" in line]
    assert len(lines) == 1 and len(lines[0]) < 600, lines
    assert "3000 folder(s)" in lines[0] and "unknown_0000/" in lines[0] and "2995 more" in lines[0], lines[0]
