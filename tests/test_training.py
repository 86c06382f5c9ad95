"""Training (fervgg.train, and model_training.py, its command line): checkpoints, resume
after interruption, early stopping, weights files, offline ImageNet error, distributed
path, bad arrays, time budget, settings.

Everything is tiny (32x32 images, a few steps); in-process runs use float32 so the
global precision policy does not leak between tests.
"""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import script

from fervgg import config
from fervgg.common import FervggError
from fervgg.demo_data import DemoDataSettings, write_demo_data
from fervgg.preprocess import PreprocessSettings, preprocess
from fervgg.train import TrainSettings, train

ROOT = Path(__file__).resolve().parent.parent

SIZE = 32
SCRIPT = str(ROOT / "scripts" / "model_training.py")
FAST = ["--batch-size", "8", "--precision", "float32", "--dense-units", "16"]


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> Path:
    """A tiny preprocessed dataset: 7 classes of synthetic faces at 32x32."""
    base = tmp_path_factory.mktemp("train_data")
    write_demo_data(DemoDataSettings(base / "images", train_per_class=5, test_per_class=2, image_size=SIZE))
    preprocess_tiny(base / "images", base / "arrays")
    return base / "arrays"


def preprocess_tiny(images: Path, out: Path) -> None:
    preprocess(PreprocessSettings(images, out, image_size=SIZE, val_fraction=0.2, workers=1))


def run_training(arrays: Path, out: Path, *extra: str) -> int:
    model_training = script("model_training")

    return model_training.main(["--data-dir", str(arrays), "--models-dir", str(out / "models"),
                                "--logs-dir", str(out / "logs"), "--run-name", "t", *FAST, *extra])


def cli(arrays: Path, out: Path, *extra: str, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, SCRIPT, "--data-dir", str(arrays), "--models-dir", str(out / "models"),
           "--logs-dir", str(out / "logs"), "--run-name", "t", *FAST, *extra]
    env = dict(kwargs.pop("env", os.environ), PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env, **kwargs)


def write_vgg_weights(path: Path, legacy: bool) -> np.ndarray:
    """A VGG16 no-top weights file with a recognisable first kernel; returns that kernel."""
    import h5py
    import keras

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    kernel = np.full(vgg.get_layer("block1_conv1").kernel.shape, 0.0123, dtype=np.float32)
    vgg.get_layer("block1_conv1").kernel.assign(kernel)
    if legacy:  # the layout of Keras's downloaded vgg16_..._notop.h5
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, vgg)
    else:
        vgg.save_weights(path)
    return kernel


def csv_epochs(path: Path) -> list[int]:
    with open(path) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


# ---------------------------------------------------------------- weights

@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-h5", "keras3-weights-h5"])
def test_weights_path_is_loaded(tmp_path, legacy):
    from fervgg.emotion_model import build_model

    path = tmp_path / (config.VGG16_NOTOP_WEIGHTS if legacy else "vgg16_notop.weights.h5")
    kernel = write_vgg_weights(path, legacy)
    model = build_model(7, SIZE, str(path), dense_units=8)
    loaded = model.get_layer("vgg16").get_layer("block1_conv1").kernel.numpy()
    np.testing.assert_allclose(loaded, kernel)


def test_missing_or_bad_weights_file_is_a_user_error(tmp_path):
    from fervgg.emotion_model import build_model

    with pytest.raises(FervggError, match="weights file not found"):
        build_model(7, SIZE, str(tmp_path / "nope.h5"))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FervggError, match="cannot load VGG16 weights"):
        build_model(7, SIZE, str(bad))


def test_offline_imagenet_error_is_one_clear_line(arrays, tmp_path):
    # An empty Keras cache and a proxy on a closed local port: the download fails at once,
    # on any machine, online or not.
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras_home"), https_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    proc = cli(arrays, tmp_path, "--weights", "imagenet", "--epochs", "1", env=env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    error_lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, out
    line = error_lines[0]
    assert config.VGG16_NOTOP_WEIGHTS in line
    assert str(tmp_path / "keras_home" / "models") in line
    assert "--weights PATH" in line and "--weights none" in line


# ---------------------------------------------------------------- training runs

def test_two_phases_write_both_checkpoints_that_reload_and_predict(arrays, tmp_path):
    import keras

    weights = tmp_path / config.VGG16_NOTOP_WEIGHTS
    write_vgg_weights(weights, legacy=True)
    assert run_training(arrays, tmp_path, "--weights", str(weights), "--epochs", "2",
                        "--fine-tune-epochs", "2", "--fresh") == 0
    models = tmp_path / "models"
    x = np.load(arrays / "X_val.npy", allow_pickle=False)
    for name, phase in ((config.BEST_MODEL, 1), (config.FINE_TUNED_MODEL, 2)):
        model = keras.models.load_model(models / name, safe_mode=True, compile=False)
        probs = model.predict(x, verbose=0)  # raw uint8 pixels go straight in
        assert probs.shape == (len(x), 7)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        info = json.loads((models / name).with_suffix(".json").read_text())
        assert info["phase"] == phase
        assert info["class_names"] == list(config.CLASS_NAMES)
        assert info["image_size"] == SIZE
        assert info["data"]["sha256"]["X_train.npy"]
        assert 0 <= info["best_val_accuracy"] <= 1 and info["best_epoch"] >= 1
        assert info["config"]["weights"] == str(weights)
        assert info["versions"]["tensorflow"]
    # Phase 2 trained the top blocks: its block5 kernels moved away from phase 1's.
    p1 = keras.models.load_model(models / config.BEST_MODEL, compile=False)
    p2 = keras.models.load_model(models / config.FINE_TUNED_MODEL, compile=False)
    k1 = p1.get_layer("vgg16").get_layer("block5_conv3").kernel.numpy()
    k2 = p2.get_layer("vgg16").get_layer("block5_conv3").kernel.numpy()
    assert not np.allclose(k1, k2)
    np.testing.assert_allclose(p1.get_layer("vgg16").get_layer("block1_conv1").kernel.numpy(),
                               p2.get_layer("vgg16").get_layer("block1_conv1").kernel.numpy())
    logs = tmp_path / "logs" / "t"
    assert (logs / "training_curves.png").stat().st_size > 0
    assert list((logs / "phase1").rglob("events.out.tfevents.*"))
    assert list((logs / "phase2").rglob("events.out.tfevents.*"))
    assert not (models / config.RESUME_DIR_NAME).exists()  # cleaned up after a finished run


def test_early_stopping_stops(arrays, tmp_path):
    # A learning rate too small to learn: val accuracy soon stops improving.
    patience, max_epochs = 2, 20
    assert run_training(arrays, tmp_path, "--weights", "none", "--epochs", str(max_epochs),
                        "--patience", str(patience), "--lr", "1e-12", "--no-augment", "--fresh") == 0
    with open(tmp_path / "logs" / "t" / "phase1.csv") as f:
        val_acc = [float(r["val_accuracy"]) for r in csv.DictReader(f)]
    assert len(val_acc) < max_epochs
    last_gain = max(i for i, a in enumerate(val_acc) if a > max(val_acc[:i], default=-1))
    assert len(val_acc) == last_gain + 1 + patience  # stopped `patience` epochs after the last gain


def test_time_budget_stops_cleanly_and_keeps_the_best_checkpoint(arrays, tmp_path, capsys):
    assert run_training(arrays, tmp_path, "--weights", "none", "--epochs", "50",
                        "--time-budget", "0.0001", "--fresh") == 0
    out = capsys.readouterr().out
    assert "time budget" in out
    assert len(csv_epochs(tmp_path / "logs" / "t" / "phase1.csv")) == 1
    assert (tmp_path / "models" / config.BEST_MODEL).is_file()


def test_cosine_lr_goes_from_base_to_floor():
    from fervgg.training import cosine_lr

    assert cosine_lr(1e-3, 0.0) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 0.5) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert cosine_lr(1e-3, 1.0) == pytest.approx(1e-5)
    assert cosine_lr(1e-3, 7.0) == pytest.approx(1e-5)  # past the budget: stays at the floor
    lrs = [cosine_lr(1.0, p / 20) for p in range(21)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_cosine_schedule_decays_over_the_epochs_and_is_logged(arrays, tmp_path):
    epochs, lr = 4, 1e-3
    assert run_training(arrays, tmp_path, "--weights", "none", "--epochs", str(epochs), "--lr", str(lr),
                        "--lr-schedule", "cosine", "--patience", "99", "--fresh") == 0
    with open(tmp_path / "logs" / "t" / "phase1.csv") as f:
        logged = [float(r["learning_rate"]) for r in csv.DictReader(f)]
    assert len(logged) == epochs
    assert all(a > b for a, b in zip(logged, logged[1:]))
    # Set before each batch: the last batch of epoch e sits just before progress (e + 1) / epochs.
    from fervgg.training import cosine_lr

    for e, got in enumerate(logged):
        assert cosine_lr(lr, (e + 1) / epochs) <= got <= cosine_lr(lr, e / epochs)


def test_resume_after_interrupt_and_kill_continues_at_the_right_epoch(arrays, tmp_path):
    args = ("--weights", "none", "--epochs", "4", "--steps-per-epoch", "3", "--fresh")

    def run_until(marker: str, sig: int, extra=args):
        proc = cli(arrays, tmp_path, *extra)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                proc.send_signal(sig)
                break
        rest, _ = proc.communicate(timeout=120)
        return proc.returncode, "".join(lines) + rest

    # Ctrl+C once epoch 1 is saved (Keras prints "Epoch 2/4" as epoch 2 begins).
    code, out = run_until("Epoch 2/4", signal.SIGINT)
    assert code == 130, out
    assert "Re-run the same command to resume" in out and "Traceback" not in out
    # Same command without --fresh: resumes; then a hard kill during a later epoch.
    resume_args = args[:-1]
    code, out = run_until("Epoch 3/4", signal.SIGKILL, resume_args)
    assert code == -signal.SIGKILL
    assert "resuming phase 1 at epoch 2 of 4" in out or "resuming phase 1 at epoch 3 of 4" in out, out
    proc = cli(arrays, tmp_path, *resume_args)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "resuming phase 1 at epoch 3 of 4" in out or "resuming phase 1 at epoch 4 of 4" in out, out
    # Every epoch ran exactly once across the three processes.
    assert sorted(csv_epochs(tmp_path / "logs" / "t" / "phase1.csv")) == [0, 1, 2, 3]
    assert (tmp_path / "models" / config.BEST_MODEL).is_file()


def test_keep_epochs_keeps_every_checkpoint_for_averaging(arrays, tmp_path):
    """--keep-epochs: each epoch's checkpoint stays in models/epochs/<run name>/ after the run
    (the resume folder is gone), and average_models.py makes one model of the last two."""
    from fervgg.averaging import AverageSettings, average
    from fervgg.emotion_model import load_model

    assert run_training(arrays, tmp_path, "--weights", "none", "--epochs", "3", "--steps-per-epoch", "2",
                        "--keep-epochs", "--fresh") == 0
    kept = tmp_path / "models" / config.KEPT_EPOCHS_DIR_NAME / "t"
    assert sorted(p.name for p in kept.iterdir()) == [f"phase1-epoch{i}.keras" for i in (1, 2, 3)]
    assert not (tmp_path / "models" / config.RESUME_DIR_NAME).exists()
    first, last = (load_model(kept / f"phase1-epoch{i}.keras") for i in (1, 3))
    assert not np.allclose(first.get_weights()[-2], last.get_weights()[-2])  # each epoch's own weights
    out = average(AverageSettings([kept / "phase1-epoch2.keras", kept / "phase1-epoch3.keras"],
                                  tmp_path / "avg.keras", sidecar=tmp_path / "models" / config.BEST_MODEL),
                  notes=lambda t: None)
    assert load_model(out).predict_on_batch(np.zeros((1, SIZE, SIZE, 1), np.float32)).shape == (1, 7)


def test_a_resumed_phase_does_not_replay_the_first_epochs_batches(arrays):
    """The pipeline of a phase resumed at epoch k is seeded apart from a fresh start's, so the
    resumed epochs see new orders, crops and erasing, not a replay of epoch 1's batches."""
    from fervgg.artifacts import load_split
    from fervgg.train import data_seed
    from fervgg.training import Augmentation, make_dataset

    train = load_split(arrays, "train")
    assert data_seed(42, 1, 0) == 43  # a fresh start keeps the seed of earlier versions
    seeds = [data_seed(42, 1, k) for k in range(4)]
    assert len(set(seeds)) == 4

    def first_labels(seed):
        """The labels of the first two batches: the shuffled order (deterministic for a seed;
        the augmentation's draws run in parallel, so their order between batches is not)."""
        import keras

        keras.utils.set_random_seed(1)  # as a new process starts: random state fresh
        ds = make_dataset(train.x, train.y, 8, 7, seed, Augmentation(crop=SIZE - 4, erasing=0.5), shuffle=True)
        return np.concatenate([np.asarray(labels) for _, labels in ds.take(2)])

    fresh, again, resumed = first_labels(seeds[0]), first_labels(seeds[0]), first_labels(seeds[3])
    assert np.array_equal(fresh, again)  # the same seed in a new process: the same order (the replay)
    assert not np.array_equal(fresh, resumed)


def test_mixup_mixes_each_batch_with_itself_images_and_labels_alike(arrays):
    """Every mixed image is w * a + (1 - w) * b of two images of its batch, with the same w and
    the same two images in its label; the weight changes from batch to batch."""
    from fervgg.artifacts import load_split
    from fervgg.training import Augmentation, make_dataset

    train = load_split(arrays, "train")
    off = Augmentation(flip=False, rotation_deg=0, zoom=0, shift=0, erasing=0, crop=0, mixup=0.0)
    plain = make_dataset(train.x, train.y, 8, 7, 5, off)
    mixed = make_dataset(train.x, train.y, 8, 7, 5, Augmentation(**{**off.__dict__, "mixup": 1.0}))
    weights = []
    for (x, y), (mx, my) in zip(plain.take(3), mixed.take(3)):
        x, y, mx, my = (np.asarray(t, np.float64) for t in (x, y, mx, my))
        np.testing.assert_allclose(my.sum(1), 1, atol=1e-6)
        for i in range(len(x)):
            # the partner: the image whose mix with x[i] gives mx[i] for one w in [0, 1]
            fits = []
            for j in range(len(x)):
                d = x[i] - x[j]
                w = 1.0 if not d.any() else float(np.dot((mx[i] - x[j]).ravel(), d.ravel()) / np.dot(d.ravel(),
                                                                                                     d.ravel()))
                if np.allclose(w * x[i] + (1 - w) * x[j], mx[i], atol=1e-3):
                    fits.append((j, w))
            assert fits, "a mixed image is not a mix of two images of its batch"
            assert any(np.allclose(w * y[i] + (1 - w) * y[j], my[i], atol=1e-4) for j, w in fits)
            weights += [w for _, w in fits if 0 <= w <= 1]
    assert len({round(w, 4) for w in weights}) > 2


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_augmented_batches_are_float32_under_a_mixed_policy(arrays, policy):
    """The augmentation layers compute in the policy's 16-bit type; the batches (and mixup's float32
    weight, which failed on bfloat16 before) stay float32, the model's input type."""
    import keras

    from fervgg.artifacts import load_split
    from fervgg.training import Augmentation, make_dataset

    train = load_split(arrays, "train")
    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        crop = train.x.shape[1] * 3 // 4
        ds = make_dataset(train.x, train.y, 8, 7, 5, Augmentation(crop=crop, erasing=0.5, mixup=1.0))
        x, y = next(iter(ds))
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert x.dtype == "float32" and y.dtype == "float32" and x.shape == (8, *train.x.shape[1:])
    np.testing.assert_allclose(np.asarray(y).sum(1), 1, atol=1e-5)


def test_mixup_is_a_checked_setting_in_the_config_and_the_fingerprint(tmp_path):
    from fervgg import resume
    from fervgg.train import TrainSettings

    with pytest.raises(FervggError, match="aug_mixup"):
        TrainSettings(data_dir=tmp_path, aug_mixup=-1)
    meta = {"sha256": {}, "class_names": ["a"], "image_size": SIZE}
    base = resume.settings_fingerprint(TrainSettings(data_dir=tmp_path), meta)
    assert resume.settings_fingerprint(TrainSettings(data_dir=tmp_path, aug_mixup=0.0), meta) == base
    assert resume.settings_fingerprint(TrainSettings(data_dir=tmp_path, aug_mixup=0.2), meta) != base


def test_resume_refuses_other_settings(arrays, tmp_path):
    from fervgg import resume

    state = resume.ResumeState(tmp_path / "models")
    state.save(None, {"fingerprint": "something-else", "run_name": "t", "phase": 1, "epoch": 1})
    with pytest.raises(FervggError, match="`fresh`"):
        run_training(arrays, tmp_path, "--weights", "none", "--epochs", "1")


@pytest.mark.parametrize("damage", ["truncated", "not_utf8", "wrong_shape", "missing_checkpoint",
                                    "truncated_checkpoint"])
def test_damaged_resume_state_is_a_one_line_error_and_deletes_nothing(arrays, tmp_path, damage):
    """An interrupted run whose resume files are damaged: never "no state, start over"
    (a new run would delete the interrupted run's best model)."""
    args = ("--weights", "none", "--epochs", "3", "--steps-per-epoch", "2")
    proc = cli(arrays, tmp_path, *args, "--fresh")
    for line in proc.stdout:  # interrupt once the second epoch's resume point is written
        if "Epoch 3/3" in line:
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    models = tmp_path / "models"
    resume_dir = models / config.RESUME_DIR_NAME
    state = resume_dir / "state.json"
    checkpoint = next(resume_dir.glob("phase1-epoch*.keras"))
    if damage == "truncated":
        state.write_text(state.read_text()[:25])
    elif damage == "not_utf8":
        state.write_bytes(b"\xff\xfe{")
    elif damage == "wrong_shape":
        state.write_text("[]")
    elif damage == "missing_checkpoint":
        checkpoint.unlink()
    else:
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = sorted(p.name for p in models.rglob("*"))
    best_bytes = (models / config.BEST_MODEL).read_bytes()
    proc = cli(arrays, tmp_path, *args)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert "--fresh" in errors[0] and ("damaged" in errors[0] or "cannot read the resume checkpoint" in errors[0])
    assert sorted(p.name for p in models.rglob("*")) == before, "nothing deleted"
    assert (models / config.BEST_MODEL).read_bytes() == best_bytes


def test_distributed_path_on_two_logical_cpus(arrays, tmp_path):
    proc = cli(arrays, tmp_path, "--weights", "none", "--epochs", "1", "--steps-per-epoch", "2",
               "--logical-cpus", "2", "--fresh")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "MirroredStrategy over 2 replicas" in out
    assert (tmp_path / "models" / config.BEST_MODEL).is_file()


# ---------------------------------------------------------------- bad arrays

def _rewrite(arrays: Path, tmp_path: Path, name: str, value: np.ndarray, fix_checksum: bool) -> Path:
    """A copy of the arrays with one array replaced (and meta's checksum updated or not)."""
    import shutil

    from fervgg.common import sha256_file

    copy = tmp_path / "arrays"
    shutil.copytree(arrays, copy)
    np.save(copy / name, value, allow_pickle=False)
    if fix_checksum:
        meta = json.loads((copy / config.META_FILE).read_text())
        meta["sha256"][name] = sha256_file(copy / name)
        (copy / config.META_FILE).write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize("name,make,match", [
    ("X_train.npy", lambda x, y: x[:, :16, :16], "shape"),
    ("X_train.npy", lambda x, y: x.astype(np.float32), "dtype"),
    ("y_train.npy", lambda x, y: y + 100, "labels outside"),
    ("y_train.npy", lambda x, y: y[:-1], "labels"),
])
def test_mismatched_arrays_are_refused(arrays, tmp_path, name, make, match):
    x = np.load(arrays / "X_train.npy")
    y = np.load(arrays / "y_train.npy")
    bad = _rewrite(arrays, tmp_path, name, make(x, y), fix_checksum=True)
    with pytest.raises(FervggError, match=match):
        run_training(bad, tmp_path, "--weights", "none", "--epochs", "1")


def test_stale_arrays_and_missing_meta_fail_in_one_line(arrays, tmp_path):
    x = np.load(arrays / "X_train.npy")
    stale = _rewrite(arrays, tmp_path, "X_train.npy", x[::-1].copy(), fix_checksum=False)
    proc = cli(stale, tmp_path, "--weights", "none")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip().count("\n") == 0 and out.startswith("error:") and "checksum" in out, out
    (stale / config.META_FILE).unlink()
    with pytest.raises(FervggError, match="meta.json is missing"):
        run_training(stale, tmp_path, "--weights", "none")
    with pytest.raises(FervggError, match="not found"):
        run_training(tmp_path / "nowhere", tmp_path, "--weights", "none")
    (tmp_path / "placeholder").mkdir()  # as preprocessed_data/ in a fresh clone: nothing preprocessed yet
    with pytest.raises(FervggError, match="no preprocessed data in .*run scripts/data_processing.py first"):
        run_training(tmp_path / "placeholder", tmp_path, "--weights", "none")


def test_an_empty_validation_split_is_refused_with_its_cause(arrays, tmp_path):
    out = tmp_path / "no_val"  # 5 images per class: a 0.05 share rounds to none in every class
    preprocess(PreprocessSettings(arrays.parent / "images", out, image_size=SIZE, val_fraction=0.05, workers=1))
    with pytest.raises(FervggError, match=r"got \d+ and 0 .*larger `val_fraction`: on small classes it rounds to 0"):
        run_training(out, tmp_path, "--weights", "none", "--epochs", "1")


def test_bf16_trained_model_loads_as_float32_and_exports(tmp_path):
    """A model saved under mixed_bfloat16 (the CPU default) must export to LiteRT: bf16 ops
    would need TensorFlow's Flex delegate, which the LiteRT runtime does not have."""
    import keras

    export_model = script("export_model")
    from fervgg.emotion_model import _all_layers, build_model, load_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(7, SIZE, "none", dense_units=8)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = tmp_path / "best_model.keras"
    model.save(path)
    path.with_suffix(".json").write_text(json.dumps({"class_names": list(config.CLASS_NAMES),
                                                     "image_size": SIZE}))
    assert {layer.compute_dtype for layer in _all_layers(load_model(path))} == {"float32"}
    assert export_model.main(["--model", str(path)]) == 0
    assert path.with_suffix(".tflite").stat().st_size > 0


def test_legacy_h5_model_is_loadable(tmp_path):
    """Users may point evaluation or prediction at a Keras .h5 model."""
    from fervgg.emotion_model import build_model, load_model

    model = build_model(7, SIZE, "none", dense_units=8)
    path = tmp_path / "model.h5"
    model.save(path)
    x = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 1)).astype(np.uint8)
    np.testing.assert_allclose(load_model(path).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


# ---------------------------------------------------------------- fine-tuning from a model of ours

def test_fine_tuning_from_a_saved_model_learns_a_new_class_set(arrays, tmp_path):
    """--weights MODEL.keras (what --weights fer2013 does with the shipped model): the
    backbone and hidden head layer start from that model, the output layer is new and
    sized for the new classes; phase 1 leaves the backbone as it was."""
    import shutil

    import keras

    source_dir = tmp_path / "source"
    assert run_training(arrays, source_dir, "--weights", "none", "--epochs", "1", "--fresh") == 0
    source = source_dir / "models" / config.BEST_MODEL

    # A new class set from the same kind of images: positive (happy, surprise) vs the rest.
    images = arrays.parent / "images"
    two = tmp_path / "two_classes"
    for split in ("train", "test"):
        for emotion_dir in (images / split).iterdir():
            group = "positive" if emotion_dir.name in ("happy", "surprise") else "negative"
            (two / split / group).mkdir(parents=True, exist_ok=True)
            for f in emotion_dir.iterdir():
                shutil.copy(f, two / split / group / f"{emotion_dir.name}_{f.name}")
    preprocess_tiny(two, tmp_path / "two_arrays")
    out = tmp_path / "tuned"
    assert run_training(tmp_path / "two_arrays", out, "--weights", str(source), "--epochs", "6",
                        "--fine-tune-epochs", "1", "--lr", "3e-3", "--fresh") == 0

    models = out / "models"
    info = json.loads((models / config.BEST_MODEL).with_suffix(".json").read_text())
    assert info["class_names"] == ["negative", "positive"]
    src = keras.models.load_model(source, safe_mode=True, compile=False)
    phase1 = keras.models.load_model(models / config.BEST_MODEL, safe_mode=True, compile=False)
    assert phase1.output_shape == (None, 2)
    for name in ("block1_conv1", "block5_conv3", "block3_conv2_bn"):
        for a, b in zip(src.get_layer("vgg16").get_layer(name).get_weights(),
                        phase1.get_layer("vgg16").get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)  # frozen in phase 1
    # It learns: the training loss falls over the six head epochs.
    with open(out / "logs" / "t" / "phase1.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (models / config.FINE_TUNED_MODEL).is_file()


def test_fine_tuning_keeps_the_start_models_crop_size_unless_told(tmp_path, capsys):
    """A model trained on 40x40 crops (as the shipped one is) is fine-tuned on the same crops
    by default, and the new model reads its centre window too; --crop-size 0 turns that off."""
    from fervgg.common import atomic_write_json
    from fervgg.emotion_model import build_model, model_info

    write_demo_data(DemoDataSettings(tmp_path / "images", train_per_class=4, test_per_class=1, image_size=48))
    preprocess(PreprocessSettings(tmp_path / "images", tmp_path / "arrays", image_size=48, val_fraction=0.2,
                                  workers=1))
    source = tmp_path / "source.keras"
    build_model(len(config.CLASS_NAMES), 48, "none", dense_units=16, crop_size=40).save(source)
    atomic_write_json(source.with_suffix(".json"), {"class_names": list(config.CLASS_NAMES), "image_size": 48,
                                                    "crop_size": 40})
    start = ("--weights", str(source), "--epochs", "1", "--fine-tune-epochs", "0", "--steps-per-epoch", "1")

    assert run_training(tmp_path / "arrays", tmp_path / "kept", *start) == 0
    assert "crop size 40: the starting model's" in capsys.readouterr().out
    kept = tmp_path / "kept" / "models" / config.BEST_MODEL
    assert model_info(kept).crop_size == 40
    assert json.loads(kept.with_suffix(".json").read_text())["config"]["crop_size"] == 40

    assert run_training(tmp_path / "arrays", tmp_path / "off", *start, "--crop-size", "0") == 0
    assert "crop size" not in capsys.readouterr().out
    assert model_info(tmp_path / "off" / "models" / config.BEST_MODEL).crop_size == 0


def test_initial_model_starts_from_every_weight_of_a_model_of_ours(arrays, tmp_path, capsys):
    """--weights none --initial-model M (how the second shipped model continued the first): the
    run starts from all of M's weights, says so, and refuses a model of another layout."""
    import keras
    from fervgg.emotion_model import build_model

    source = tmp_path / "start.keras"
    start = build_model(len(config.CLASS_NAMES), SIZE, "none", dense_units=16, crop_size=0)
    kernel = start.get_layer("vgg16").get_layer("block1_conv1").kernel
    kernel.assign(np.full(kernel.shape, 0.0123, np.float32))
    start.save(source)

    flags = ("--weights", "none", "--initial-model", str(source), "--epochs", "1", "--steps-per-epoch", "1",
             "--optimizer", "sgd", "--lr", "1e-9", "--weight-decay", "0")
    assert run_training(arrays, tmp_path / "run", *flags) == 0
    out = capsys.readouterr().out
    assert f"starting from every weight of {source}" in out
    assert "training VGG16-BN from start.keras's weights" in out
    trained = keras.models.load_model(tmp_path / "run" / "models" / config.BEST_MODEL, safe_mode=True, compile=False)
    np.testing.assert_allclose(trained.get_layer("vgg16").get_layer("block1_conv1").kernel, 0.0123, atol=1e-6)

    other = tmp_path / "other.keras"
    build_model(len(config.CLASS_NAMES), SIZE, "none", dense_units=8, crop_size=0).save(other)
    with pytest.raises(FervggError, match="another layout"):
        run_training(arrays, tmp_path / "bad", "--weights", "none", "--initial-model", str(other), "--epochs", "1")


def test_a_backbone_without_a_pool_keeps_its_layout_when_training_continues_from_it(tmp_path):
    """Dropping block 4's max-pool (block 5 then sees 5x5 of a 40x40 crop, not 2x2) keeps every
    weight's shape, so the shipped weights fit it; a model saved that way starts the next run
    with the same layout and weights, not silently re-pooled."""
    from fervgg.emotion_model import build_model, pooled_blocks_of, saved_backbone, vgg16_bn_backbone

    assert vgg16_bn_backbone(40).output.shape[1:3] == (1, 1)
    wide = vgg16_bn_backbone(40, (1, 2, 3, 5))
    assert pooled_blocks_of(wide) == (1, 2, 3, 5) and wide.output.shape[1:3] == (2, 2)
    assert [w.shape for w in wide.weights] == [w.shape for w in vgg16_bn_backbone(40).weights]

    path = tmp_path / "wide.keras"
    source = build_model(len(config.CLASS_NAMES), 48, "none", dense_units=8, crop_size=40, pooled_blocks=(1, 2, 3, 5))
    source.save(path)
    backbone, _ = saved_backbone(str(path), 48, 40)
    assert pooled_blocks_of(backbone) == (1, 2, 3, 5)
    for a, b in zip(backbone.get_weights(), source.get_layer("vgg16").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert pooled_blocks_of(build_model(len(config.CLASS_NAMES), 48, str(path), crop_size=40).get_layer("vgg16")) \
        == (1, 2, 3, 5)
    with pytest.raises(FervggError, match="from scratch only"):
        build_model(len(config.CLASS_NAMES), 48, str(path), crop_size=40, pooled_blocks=(1, 2, 3, 5))


def first_epoch_loss(out: Path) -> float:
    with open(out / "logs" / "t" / "phase1.csv") as f:
        return float(next(csv.DictReader(f))["loss"])


def test_distillation_trains_on_the_teachers_targets(arrays, tmp_path, capsys):
    """--teacher: a teacher that agrees with the labels (weight 1) trains exactly as the labels do;
    one that disagrees gives other targets, a higher loss; the run says so and the sidecar records
    the teacher file's checksum."""
    from fervgg.artifacts import load_split
    from fervgg.common import sha256_file

    y = load_split(arrays, "train").y
    agree, disagree = tmp_path / "agree.npy", tmp_path / "disagree.npy"
    np.save(agree, np.eye(len(config.CLASS_NAMES), dtype=np.float32)[y])
    np.save(disagree, np.eye(len(config.CLASS_NAMES), dtype=np.float32)[(y + 3) % len(config.CLASS_NAMES)])
    flags = ("--weights", "none", "--epochs", "1", "--no-augment", "--no-class-weights", "--seed", "3")
    losses = {}
    for name, extra in (("plain", ()), ("agree", ("--teacher", str(agree), "--teacher-weight", "1")),
                        ("disagree", ("--teacher", str(disagree), "--teacher-weight", "1"))):
        assert run_training(arrays, tmp_path / name, *flags, *extra) == 0
        losses[name] = first_epoch_loss(tmp_path / name)
    out = capsys.readouterr().out
    assert f"distillation: teacher {disagree} (agrees with the labels on 0.0% of train), weight 1" in out
    assert f"distillation: teacher {agree} (agrees with the labels on 100.0% of train)" in out
    assert losses["agree"] == pytest.approx(losses["plain"], rel=1e-3)
    assert abs(losses["disagree"] - losses["plain"]) > 1e-3 * losses["plain"]
    info = json.loads((tmp_path / "agree" / "models" / config.BEST_MODEL).with_suffix(".json").read_text())
    assert info["teacher"] == [{"file": str(agree), "sha256": sha256_file(agree)}]
    assert info["config"]["teacher"] == [str(agree)] and info["config"]["teacher_weight"] == 1.0

    # Several files are one teacher, their mean: agree + disagree at weight 1 = half of each.
    assert run_training(arrays, tmp_path / "both", *flags, "--teacher", str(agree), str(disagree),
                        "--teacher-weight", "1") == 0
    assert f"distillation: teacher {agree} + {disagree} (agrees with the labels on" in capsys.readouterr().out
    assert losses["plain"] < first_epoch_loss(tmp_path / "both") < losses["disagree"]


def test_a_teacher_file_that_cannot_be_one_is_a_one_line_error(arrays, tmp_path):
    from fervgg.artifacts import load_split

    n = len(load_split(arrays, "train").y)
    c = len(config.CLASS_NAMES)
    files = {"missing.npy": None, "short.npy": np.full((n - 1, c), 1 / c, np.float32),
             "negative.npy": -np.ones((n, c), np.float32), "ints.npy": np.ones((n, c), np.int64),
             "objects.npy": np.array([[{}] * c] * n, dtype=object), "text.npy": b"not an array"}
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            np.save(path, content, allow_pickle=True)
        proc = cli(arrays, tmp_path / name.replace(".npy", ""), "--weights", "none", "--epochs", "1",
                   "--teacher", str(path))
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2, out
        assert "Traceback" not in out and len([ln for ln in out.splitlines() if ln.startswith("error:")]) == 1, out
        assert str(path) in out, out


def test_a_changed_teacher_file_is_another_run(arrays, tmp_path):
    from fervgg.resume import settings_fingerprint

    meta = {"sha256": {"X_train.npy": "x"}}
    teacher = tmp_path / "t.npy"
    np.save(teacher, np.ones((2, 7), np.float32))
    first = settings_fingerprint(TrainSettings(weights="none", teacher=teacher), meta)
    assert first == settings_fingerprint(TrainSettings(weights="none", teacher=[teacher]), meta)
    assert first != settings_fingerprint(TrainSettings(weights="none"), meta)
    assert first != settings_fingerprint(TrainSettings(weights="none", teacher=teacher, teacher_weight=0.5), meta)
    np.save(teacher, np.full((2, 7), 2, np.float32))
    assert first != settings_fingerprint(TrainSettings(weights="none", teacher=teacher), meta)


def test_only_a_start_model_of_ours_gives_its_crop_size(tmp_path):
    from fervgg.common import atomic_write_json
    from fervgg.train import start_crop_size

    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: only the sidecar is")
    atomic_write_json(model.with_suffix(".json"), {"class_names": ["a", "b"], "image_size": 48, "crop_size": 40})
    assert start_crop_size(TrainSettings(weights=str(model)), 48) == 40
    assert start_crop_size(TrainSettings(weights="none", initial_model=model), 48) == 40
    assert start_crop_size(TrainSettings(weights="none"), 48) == config.CROP_SIZE
    assert start_crop_size(TrainSettings(weights="imagenet"), 48) == config.CROP_SIZE
    assert start_crop_size(TrainSettings(weights=str(tmp_path / "missing.keras")), 48) == config.CROP_SIZE
    # data of another size: the model cannot start this run anyway (building it says why), so no crop
    assert start_crop_size(TrainSettings(weights=str(model)), 64) == config.CROP_SIZE
    model.with_suffix(".json").unlink()  # no sidecar: nothing says it was trained on crops
    assert start_crop_size(TrainSettings(weights=str(model)), 48) == 0


def test_missing_start_model_is_a_user_error(arrays, tmp_path):
    with pytest.raises(FervggError, match="model to start from not found"):
        run_training(arrays, tmp_path, "--weights", str(tmp_path / "nope.keras"), "--epochs", "1")
    if not config.PRETRAINED_MODEL.is_file():
        with pytest.raises(FervggError, match="shipped model"):
            run_training(arrays, tmp_path, "--weights", "fer2013", "--epochs", "1")


def test_fine_tuning_from_a_model_with_the_plain_vgg16_backbone(arrays, tmp_path):
    """A model of ours trained from VGG16 weights (no batch norm) is a start point too."""
    import keras

    weights = tmp_path / config.VGG16_NOTOP_WEIGHTS
    write_vgg_weights(weights, legacy=True)
    assert run_training(arrays, tmp_path / "first", "--weights", str(weights), "--epochs", "1",
                        "--fine-tune-epochs", "0", "--fresh") == 0
    source = tmp_path / "first" / "models" / config.BEST_MODEL
    assert run_training(arrays, tmp_path / "second", "--weights", str(source), "--epochs", "1",
                        "--fine-tune-epochs", "0", "--fresh") == 0
    a = keras.models.load_model(source, compile=False).get_layer("vgg16").get_layer("block4_conv1")
    b = keras.models.load_model(tmp_path / "second" / "models" / config.BEST_MODEL,
                                compile=False).get_layer("vgg16").get_layer("block4_conv1")
    np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())


# ---------------------------------------------------------------- settings and failures

@pytest.mark.parametrize("flag,value", [
    ("--lr", "nan"), ("--lr", "0"), ("--fine-tune-lr", "inf"), ("--time-budget", "nan"),
    ("--time-budget", "0"), ("--steps-per-epoch", "0"), ("--aug-rotation", "-5"), ("--aug-zoom", "nan"),
    ("--aug-erasing", "1.5"), ("--aug-mixup", "-0.2"), ("--dropout", "1"), ("--epochs", "0"), ("--batch-size", "-8"),
    ("--weight-decay", "-1e-3"), ("--label-smoothing", "nan"), ("--warmup-epochs", "-1"),
    ("--patience", "0"), ("--dense-units", "0"), ("--lr", "ten"),
])
def test_numeric_flags_are_checked_before_any_work(flag, value, capsys):
    model_training = script("model_training")

    with pytest.raises(SystemExit) as exc:
        model_training.parse_args([f"{flag}={value}"])  # "=": "-5" is not taken for a flag
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument " in err and flag in err and value in err, err


def test_nonfinite_loss_stops_with_an_error_and_keeps_the_good_model(arrays, tmp_path, monkeypatch):
    """A diverging run stops at the first NaN loss, saves nothing from it and leaves the
    previous good model in place; the next run that saves moves that model aside, not away."""
    import keras

    from fervgg import training

    args = ("--weights", "none", "--epochs", "1", "--steps-per-epoch", "2", "--fresh")
    models = tmp_path / "models"
    assert run_training(arrays, tmp_path, *args) == 0
    good = {f.name: f.read_bytes() for f in models.glob("best_model.*")}
    assert set(good) == {config.BEST_MODEL, "best_model.json"}

    def nan_loss(y_true, y_pred):  # stands for any divergence (too high --lr, bad data)
        return keras.ops.mean(y_pred) * float("nan")

    def compile_nan(model, *_, **__):
        model.compile(optimizer="sgd", loss=nan_loss, metrics=["accuracy"])

    with monkeypatch.context() as m:
        m.setattr(training, "compile_model", compile_nan)
        with pytest.raises(FervggError, match=r"training diverged: the loss became nan in epoch 1, batch 1"):
            run_training(arrays, tmp_path, *args)
    assert {f.name: f.read_bytes() for f in models.glob("best_model.*")} == good
    assert not (models / config.PREVIOUS_MODELS_DIR).exists()
    assert csv_epochs(tmp_path / "logs" / "t" / "phase1.csv") == []

    assert run_training(arrays, tmp_path, *args) == 0
    previous = models / config.PREVIOUS_MODELS_DIR
    assert {f.name: f.read_bytes() for f in previous.glob("best_model.*")} == good
    assert (models / config.BEST_MODEL).read_bytes() != good[config.BEST_MODEL]


def test_epoch_logged_but_not_saved_is_not_logged_twice_after_resume(arrays, tmp_path):
    """SIGKILL between the CSV row and the resume point of an epoch: that epoch runs again
    on resume, and the CSV (and the curves) must still show it once."""
    args = ("--weights", "none", "--epochs", "3", "--steps-per-epoch", "2")
    proc = cli(arrays, tmp_path, *args, "--fresh")
    for line in proc.stdout:
        if "Epoch 2/3" in line:  # epoch 1 is saved; stop during epoch 2
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    log = tmp_path / "logs" / "t" / "phase1.csv"
    assert csv_epochs(log) == [0]
    with open(log) as f:  # the row a kill right after epoch 2's CSV write leaves behind
        header, row = f.read().splitlines()[:2]
    log.write_text(f"{header}\n{row}\n1{row[row.index(','):]}\n")
    assert csv_epochs(log) == [0, 1]
    proc = cli(arrays, tmp_path, *args)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "resuming phase 1 at epoch 2 of 3" in out, out
    assert csv_epochs(log) == [0, 1, 2]


def test_auto_precision_respects_a_onednn_isa_cap(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (how a bf16 CPU emulates an AVX2-only one): bfloat16 would be
    emulated, so auto precision must not pick it."""
    from fervgg import hardware

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.cpu_has_bf16() is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    monkeypatch.setattr(hardware.Path, "read_text", lambda self: "flags : avx2 avx512f avx512_bf16")
    assert hardware.cpu_has_bf16() is True


# ---------------------------------------------------------------- the package, without a command line

def test_train_from_settings_without_a_command_line(arrays, tmp_path, capsys):
    settings = TrainSettings(data_dir=arrays, models_dir=tmp_path / "models", logs_dir=tmp_path / "logs",
                             run_name="lib", weights="none", epochs=1, steps_per_epoch=2, batch_size=8,
                             precision="float32", dense_units=16, aug_mixup=0.3)
    result = train(settings)
    assert set(result.phases) == {1}
    phase = result.phases[1]
    assert phase.model_path == tmp_path / "models" / config.BEST_MODEL and phase.model_path.is_file()
    assert 0 <= phase.best_val_accuracy <= 1 and phase.best_epoch == 1
    assert result.run_name == "lib" and result.run_dir == tmp_path / "logs" / "lib"
    info = json.loads(phase.model_path.with_suffix(".json").read_text())
    assert info["config"]["models_dir"] == str(tmp_path / "models")  # Paths as text, as the flags gave
    assert info["config"]["aug_mixup"] == 0.3
    # The keys (and order) the sidecars of the argparse-based script had (aug_mixup and teacher* since
    # 2026-12-04).
    assert list(info["config"]) == [
        "data_dir", "models_dir", "logs_dir", "run_name", "weights", "initial_model", "dense_units", "dropout",
        "epochs", "fine_tune_epochs", "batch_size", "lr", "fine_tune_lr", "fine_tune_blocks", "optimizer",
        "weight_decay", "warmup_epochs", "label_smoothing", "class_weights", "patience", "lr_patience",
        "lr_schedule", "time_budget", "steps_per_epoch", "seed", "fresh", "keep_epochs", "augment", "aug_flip",
        "aug_rotation", "aug_zoom", "aug_shift", "crop_size", "aug_erasing", "aug_mixup", "teacher", "teacher_weight",
        "teacher_temperature", "precision", "distribute", "logical_cpus"]


def test_the_package_needs_no_command_line_and_changes_nothing_on_import():
    code = ("import sys, warnings; from PIL import Image; pixels = Image.MAX_IMAGE_PIXELS; "
            "import fervgg.train, fervgg.preprocess, fervgg.demo_data, fervgg.imaging, fervgg.folders; "
            "bomb = [f for f in warnings.filters if f[2] is Image.DecompressionBombWarning]; "
            "print('argparse' in sys.modules, Image.MAX_IMAGE_PIXELS == pixels and not bomb)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


@pytest.mark.parametrize("bad,match", [
    ({"initial_model": "x.keras"}, "`initial_model` needs `weights` none"),
    ({"lr": float("nan")}, "`lr` nan is out of range"),
    ({"epochs": 1.5}, "`epochs` must be an integer"),
    ({"optimizer": "rmsprop"}, "`optimizer` 'rmsprop' is not one of adam, sgd"),
    ({"teacher_weight": 0.5}, "need a `teacher`"),
    ({"teacher": "t.npy", "teacher_temperature": 0}, "`teacher_temperature` 0.0 is out of range"),
    ({"teacher": "t.npy", "teacher_weight": 1.5}, "`teacher_weight` 1.5 is out of range"),
])
def test_bad_train_settings_raise_our_error(bad, match):
    with pytest.raises(FervggError, match=match):
        TrainSettings(**bad)


def test_crop_size_is_checked_against_the_data_before_tensorflow_loads(arrays, tmp_path):
    with pytest.raises(FervggError, match=f"`crop_size` 30 must be at least 32 and below the image size {SIZE}"):
        train(TrainSettings(data_dir=arrays, models_dir=tmp_path, crop_size=30))


def test_resume_fingerprint_is_unchanged_for_runs_started_by_earlier_versions():
    """The hashes the argparse-based model_training.py computed (before TrainSettings existed):
    a run interrupted then must still resume."""
    from fervgg.resume import settings_fingerprint

    meta = {"sha256": {"X_train.npy": "abc"}}
    assert settings_fingerprint(TrainSettings(), meta) == "6a6c14e5a1e91ce6"
    assert settings_fingerprint(TrainSettings(weights="None", lr=1, crop_size=40, initial_model="x.keras",
                                              augment=False), meta) == "856f96ccd235089e"


# ---------------------------------------------------------------- issue 21: names, locks, folders

@pytest.mark.parametrize("name", ["../../x", "/tmp/elsewhere", "a/b", "..", ".", "", "a\\b"])
def test_a_run_name_with_separators_or_dots_is_refused(name):
    with pytest.raises(FervggError, match="`run_name`"):
        TrainSettings(run_name=name)


def test_a_second_run_on_a_models_folder_in_use_is_refused_naming_the_holder(arrays, tmp_path):
    from fervgg.common import folder_lock

    models = tmp_path / "models"
    with folder_lock(models, "training run other"):
        with pytest.raises(FervggError, match=r"in use by training run other \(pid \d+"):
            train(TrainSettings(data_dir=arrays, models_dir=models, logs_dir=tmp_path / "logs", weights="none",
                                epochs=1, steps_per_epoch=1, batch_size=8, precision="float32", dense_units=16))
    assert not (models / config.BEST_MODEL).exists()


def test_one_class_arrays_are_refused_in_one_line(tmp_path):
    from fervgg.artifacts import write_dataset

    data = tmp_path / "one"
    x = {s: np.zeros((4, SIZE, SIZE), np.uint8) for s in config.SPLITS}
    y = {s: np.zeros(4, np.int64) for s in config.SPLITS}
    write_dataset(data, x, y, lambda sha: {"class_names": ["happy"], "image_size": SIZE, "sha256": sha,
                                           "counts": {}})
    with pytest.raises(FervggError, match="at least 2 classes"):
        train(TrainSettings(data_dir=data, models_dir=tmp_path / "m", logs_dir=tmp_path / "l", weights="none",
                            epochs=1, batch_size=2, precision="float32", dense_units=16))


def test_unwritable_models_or_logs_folder_is_named_before_training(arrays, tmp_path, monkeypatch):
    import errno
    import tempfile

    (tmp_path / "file").write_text("x")
    with pytest.raises(FervggError, match="`models_dir`.*is under .*file, which is a file"):
        train(TrainSettings(data_dir=arrays, models_dir=tmp_path / "file" / "m", logs_dir=tmp_path / "l",
                            weights="none", epochs=1, steps_per_epoch=1, batch_size=8, precision="float32"))
    real = tempfile.TemporaryFile
    logs = tmp_path / "ro_logs"
    logs.mkdir()

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == logs:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(FervggError, match="cannot write to `logs_dir`.*Read-only file system") as err:
        train(TrainSettings(data_dir=arrays, models_dir=tmp_path / "m", logs_dir=logs, weights="none",
                            epochs=1, steps_per_epoch=1, batch_size=8, precision="float32", dense_units=16))
    assert "free some space" not in str(err.value)


def test_a_full_logs_disk_after_training_names_the_path_and_says_the_model_is_saved(arrays, tmp_path, monkeypatch,
                                                                                   capsys):
    import errno

    from fervgg import training

    def full(run_dir):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training, "plot_curves", full)
    result = train(TrainSettings(data_dir=arrays, models_dir=tmp_path / "m", logs_dir=tmp_path / "l",
                                 run_name="full", weights="none", epochs=1, steps_per_epoch=1, batch_size=8,
                                 precision="float32", dense_units=16))
    err = capsys.readouterr().err
    assert result.curves is None and (tmp_path / "m" / config.BEST_MODEL).is_file()
    assert "No space left on device" in err and str(tmp_path / "l" / "full") in err and "saved" in err


def test_a_folder_to_create_on_a_read_only_disk_is_called_read_only(tmp_path, monkeypatch):
    """As root, os.access says yes on a read-only mount: the mount's flags are asked too."""
    from fervgg.common import writable_folder

    real = os.statvfs

    class ReadOnly:
        def __init__(self, stat):
            self.stat = stat

        def __getattr__(self, name):
            return os.ST_RDONLY if name == "f_flag" else getattr(self.stat, name)

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly(real(path)))
    with pytest.raises(FervggError, match="cannot write to `logs_dir` .*Read-only file system"):
        writable_folder(tmp_path / "logs", "`logs_dir`")
