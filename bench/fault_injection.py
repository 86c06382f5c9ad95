"""Fault injection: the four scripts (and export) under faults, each checked to fail cleanly.

For every case: the exit code against the one expected, whether a Python traceback
reached the user, and whether the data that was there before is intact (arrays and
models compared byte for byte with a snapshot, resumed runs checked for whole epochs).
Faults: Ctrl+C and SIGKILL at chosen points of preprocessing and training, full disks
(small tmpfs mounts; those cases are skipped where mounting is not allowed, e.g. not
root), corrupt files of every kind the pipeline reads, and (issue 21) outputs that alias
their inputs, two runs at once on one folder or file, paths that escape their folder,
nested or hostile JSON in every JSON file we read, and unwritable outputs (which must be
refused before any work).

    python bench/fault_injection.py            # about 4 minutes on 2 cores; exit 1 on any failure
    python bench/fault_injection.py --keep     # keep the work folder to look at

A developer's check, not part of `make test` (it mounts file systems and trains a few
tiny models); the behaviour each case checks is also pinned by unit tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


from fervgg import artifacts
from fervgg import config
from fervgg.common import cpu_description, format_table

ROOT = Path(__file__).resolve().parent.parent

SHARED_VIDEO = ROOT.parent / "shared" / "videos" / "single_face.mp4"
TINY_TRAINING = ["--weights", "none", "--epochs", "3", "--steps-per-epoch", "2", "--batch-size", "8",
                 "--dense-units", "16", "--precision", "float32", "--run-name", "f"]


@dataclass
class Case:
    name: str
    expected: set[int]
    code: int | None = None
    traceback: bool = False
    intact: bool | None = None  # None: nothing to compare
    note: str = ""
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.skipped) or (self.code in self.expected and not self.traceback
                                      and self.intact is not False)


# ---------------------------------------------------------------- running the scripts

def command(script: str, *args) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / script), *map(str, args)]


def env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def run(script: str, *args, timeout: int = 300) -> tuple[int, str]:
    proc = subprocess.run(command(script, *args), capture_output=True, text=True, env=env(), timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def run_until(script: str, *args, sig: int, marker: str | None = None, appears: Path | None = None,
              after_s: float | None = None, timeout: int = 300) -> tuple[int, str, bool]:
    """Start a script and send `sig` when `marker` shows in its output, `appears` exists, or
    `after_s` seconds have passed; returns (exit code, output, whether the signal was sent)."""
    proc = subprocess.Popen(command(script, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env())
    sent, lines = False, []
    if marker:
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                proc.send_signal(sig)
                sent = True
                break
    else:
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < timeout:
            if (appears and appears.exists()) or (after_s is not None and time.monotonic() - start >= after_s):
                proc.send_signal(sig)
                sent = True
                break
            time.sleep(0.0005 if appears else 0.01)
    rest, _ = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(lines) + (rest or ""), sent


def record(case: Case, code: int, output: str, intact: bool | None = None, note: str = "") -> Case:
    case.code, case.traceback, case.intact = code, "Traceback (most recent call last)" in output, intact
    last = [line for line in output.strip().splitlines() if line.startswith("error:")]
    case.note = note or (last[-1][:90] if last else "")
    return case


# ---------------------------------------------------------------- snapshots

def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and config.RESUME_DIR_NAME not in p.parts and artifacts.STAGING_DIR not in p.parts}


def arrays_intact(out: Path, before: dict[str, bytes]) -> bool:
    if snapshot(out) != before:
        return False
    try:
        for split in config.SPLITS:
            artifacts.load_split(out, split)  # checksums against meta.json
    except Exception:  # noqa: BLE001 - any failure means "not intact"
        return False
    return True


def csv_epochs_unique(log: Path) -> bool:
    import csv

    with open(log) as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    return epochs == list(range(len(epochs)))


@contextlib.contextmanager
def tmpfs(size: str, options: str = ""):
    """A fresh tmpfs of `size` (e.g. "2m"; `options` e.g. ",ro"), or None where mounting is
    not allowed."""
    mount = Path(tempfile.mkdtemp(prefix="fault-tmpfs-"))
    try:
        ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs",
                                                   str(mount)], capture_output=True).returncode == 0
    except OSError:
        ok = False
    try:
        yield mount if ok else None
    finally:
        if ok:
            subprocess.run(["umount", str(mount)], capture_output=True)
        shutil.rmtree(mount, ignore_errors=True)


def fill(folder: Path, leave_free: int) -> None:
    """Fill the file system of `folder` until about `leave_free` bytes are free."""
    free = shutil.disk_usage(folder).free - leave_free
    if free > 0:
        with open(folder / "filler", "wb") as f:
            f.write(b"\0" * free)


# ---------------------------------------------------------------- fixtures

def make_images(folder: Path, per_class: int, size: int = 48) -> Path:
    code, out = run("make_demo_data.py", "--out-dir", folder, "--train-per-class", per_class,
                    "--test-per-class", 3, "--image-size", size)
    assert code == 0, out
    return folder


def preprocess(images: Path, out: Path, *extra) -> None:
    code, out_text = run("data_processing.py", "--data-dir", images, "--out-dir", out, *extra)
    assert code == 0, out_text


# ---------------------------------------------------------------- cases

def preprocessing_cases(work: Path) -> list[Case]:
    cases = []
    small = make_images(work / "small", 6)
    big = make_images(work / "big", 2000, size=160)  # 5 s or more to decode: time to interrupt it

    out = work / "pre"
    preprocess(small, out)
    before = snapshot(out)

    c = Case("preprocess: Ctrl+C while decoding", {130})
    code, text, sent = run_until("data_processing.py", "--data-dir", big, "--out-dir", out, "--workers", 1,
                                 sig=signal.SIGINT, after_s=2.0)  # past start-up even on a loaded machine
    cases.append(record(c, code, text, arrays_intact(out, before),
                        "" if sent and "wrote" not in text else "signal too late: finished first"))

    c = Case("preprocess: SIGKILL while writing", {-signal.SIGKILL})
    code, text, sent = run_until("data_processing.py", "--data-dir", big, "--out-dir", out,
                                 sig=signal.SIGKILL, appears=out / artifacts.STAGING_DIR)
    cases.append(record(c, code, text, arrays_intact(out, before) and sent,
                        "" if sent else "signal not sent: finished first"))

    c = Case("preprocess: re-run after SIGKILL", {0})
    code, text = run("data_processing.py", "--data-dir", small, "--out-dir", out)
    fresh = snapshot(out)
    cases.append(record(c, code, text, arrays_intact(out, fresh) and not (out / artifacts.STAGING_DIR).exists()))

    for name, room in (("full disk, found before decoding", 0), ("full disk while writing", None)):
        c = Case(f"preprocess: {name}", {2})
        with tmpfs("64m") as mount:
            if mount is None:
                c.skipped = "no tmpfs (needs root)"
                cases.append(c)
                continue
            target = mount / "pre"
            shutil.copytree(out, target)
            kept = snapshot(target)
            n_files = sum(1 for p in (big / "train").rglob("*.png")) + sum(1 for p in (big / "test").rglob("*.png"))
            needed = artifacts.bytes_needed(n_files, config.IMAGE_SIZE)
            # room None: enough by the estimate (checked first), not with file system blocks and meta.json
            fill(mount, leave_free=needed + 8192 if room is None else 0)
            code, text = run("data_processing.py", "--data-dir", big, "--out-dir", target)
            cases.append(record(c, code, text, arrays_intact(target, kept)))

    c = Case("preprocess: --out-dir is a file", {2})
    (work / "a_file").write_text("x")
    code, text = run("data_processing.py", "--data-dir", small, "--out-dir", work / "a_file")
    cases.append(record(c, code, text, (work / "a_file").read_text() == "x"))

    c = Case("preprocess: corrupt, empty, bomb, text images", {0})
    bad = work / "bad_images"
    shutil.copytree(small, bad)
    good = next((bad / "train" / "happy").iterdir()).read_bytes()
    (bad / "train" / "happy" / "truncated.png").write_bytes(good[: len(good) // 2])
    (bad / "train" / "happy" / "empty.jpg").write_bytes(b"")
    (bad / "train" / "sad" / "text.jpg").write_text("not an image")
    (bad / "train" / "sad" / "bomb.png").write_bytes(png_claiming(60_000, 60_000))
    code, text = run("data_processing.py", "--data-dir", bad, "--out-dir", work / "pre_bad")
    meta = json.loads((work / "pre_bad" / config.META_FILE).read_text()) if code == 0 else {}
    cases.append(record(c, code, text, len(meta.get("bad_files", [])) == 4))

    c = Case("preprocess: empty class folder", {2})
    empty = work / "empty_class"
    shutil.copytree(small, empty)
    shutil.rmtree(empty / "train" / "fear")
    (empty / "train" / "fear").mkdir()
    code, text = run("data_processing.py", "--data-dir", empty, "--out-dir", work / "pre_empty")
    cases.append(record(c, code, text, not (work / "pre_empty").exists()))
    return cases


def training_cases(work: Path) -> tuple[list[Case], Path]:
    cases = []
    data = work / "pre"
    models, logs = work / "train" / "models", work / "train" / "logs"
    args = ["--data-dir", data, "--models-dir", models, "--logs-dir", logs, *TINY_TRAINING]

    c = Case("train: Ctrl+C after epoch 1", {130})
    code, text, _ = run_until("model_training.py", *args, "--fresh", sig=signal.SIGINT, marker="Epoch 2/3")
    cases.append(record(c, code, text, (models / config.BEST_MODEL).is_file()))

    c = Case("train: SIGKILL in epoch 3 (after resuming)", {-signal.SIGKILL})
    code, text, _ = run_until("model_training.py", *args, sig=signal.SIGKILL, marker="Epoch 3/3")
    cases.append(record(c, code, text, "resuming phase 1 at epoch 2" in text))

    c = Case("train: resume after SIGKILL", {0})
    code, text = run("model_training.py", *args)
    cases.append(record(c, code, text, "resuming phase 1 at epoch 3" in text
                        and csv_epochs_unique(logs / "f" / "phase1.csv")))
    trained = work / "trained"
    shutil.copytree(models, trained)

    c = Case("train: full disk (models on a 100 MB tmpfs)", {2})
    with tmpfs("100m") as mount:
        if mount is None:
            c.skipped = "no tmpfs (needs root)"
            cases.append(c)
        else:
            code, text = run("model_training.py", "--data-dir", data, "--models-dir", mount / "models",
                             "--logs-dir", logs, *TINY_TRAINING, "--fresh")
            leftovers = [p.name for p in (mount / "models").rglob("*tmp*")]
            cases.append(record(c, code, text, not leftovers, f"left: {leftovers}" if leftovers else ""))

    def damaged_state_case(name: str, damage) -> Case:
        c = Case(f"train: {name}", {2})
        folder = work / f"damaged-{len(cases)}"
        shutil.rmtree(folder, ignore_errors=True)
        m = folder / "models"
        a = ["--data-dir", data, "--models-dir", m, "--logs-dir", folder / "logs", *TINY_TRAINING]
        run_until("model_training.py", *a, "--fresh", sig=signal.SIGINT, marker="Epoch 3/3")
        damage(m / config.RESUME_DIR_NAME)
        before = {str(p.relative_to(m)): p.read_bytes() for p in m.rglob("*") if p.is_file()}
        code, text = run("model_training.py", *a)
        after = {str(p.relative_to(m)): p.read_bytes() for p in m.rglob("*") if p.is_file()}
        return record(c, code, text, before == after)

    def truncate(path: Path, keep: int) -> None:
        path.write_bytes(path.read_bytes()[:keep])

    cases.append(damaged_state_case("truncated state.json", lambda d: truncate(d / "state.json", 20)))
    cases.append(damaged_state_case("state.json not UTF-8", lambda d: (d / "state.json").write_bytes(b"\xff\xfe")))
    cases.append(damaged_state_case("truncated resume checkpoint",
                                    lambda d: [truncate(p, 1000) for p in d.glob("*.keras")]))

    for name, damage in (
        ("truncated meta.json", lambda d: truncate(d / config.META_FILE, 50)),
        ("truncated X_train.npy", lambda d: truncate(d / "X_train.npy", 500)),
        ("pickled object array", lambda d: np.save(d / "y_train.npy", np.array([{"a": 1}], dtype=object),
                                                   allow_pickle=True)),
    ):
        c = Case(f"train: {name}", {2})
        bad = work / "bad-arrays"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(data, bad)
        damage(bad)
        code, text = run("model_training.py", "--data-dir", bad, "--models-dir", work / "m-bad",
                         "--logs-dir", logs, *TINY_TRAINING, "--fresh")
        cases.append(record(c, code, text, not (work / "m-bad" / config.BEST_MODEL).exists()))

    c = Case("train: --lr nan", {2})
    code, text = run("model_training.py", *args, "--lr", "nan")
    cases.append(record(c, code, text))
    return cases, trained


def model_cases(work: Path, trained: Path) -> list[Case]:
    cases = []
    model = trained / config.BEST_MODEL
    code, text = run("export_model.py", "--model", model)
    assert code == 0, text
    photos = work / "photos"
    photos.mkdir()
    for i, p in enumerate(sorted((work / "small" / "test").rglob("*.png"))[:6]):
        shutil.copy(p, photos / f"p{i}.png")

    def broken_copy(name: str, damage) -> Path:
        folder = work / f"broken-{name}"
        shutil.copytree(trained, folder)
        damage(folder)
        return folder / config.BEST_MODEL

    def predict_case(name: str, model_file: Path, expected: set[int], *extra) -> Case:
        before = snapshot(model_file.parent)
        code, text = run("predict_emotion.py", "--image_path", photos, "--no-detect", "--model", model_file, *extra)
        return record(Case(f"predict: {name}", expected), code, text, snapshot(model_file.parent) == before)

    cases.append(predict_case("truncated .keras", broken_copy(
        "keras", lambda d: (d / config.BEST_MODEL).write_bytes((d / config.BEST_MODEL).read_bytes()[:5000])),
        {2}, "--backend", "keras"))
    cases.append(predict_case("sidecar .json is []", broken_copy(
        "sidecar", lambda d: (d / "best_model.json").write_text("[]")), {2}))
    cases.append(predict_case("sidecar .json not UTF-8", broken_copy(
        "sidecar8", lambda d: (d / "best_model.json").write_bytes(b"\xff{")), {2}))
    cases.append(predict_case("corrupt .tflite", broken_copy(
        "tflite", lambda d: (d / "best_model.tflite").write_bytes(b"TFL3" + b"\0" * 100)), {2}, "--backend", "litert"))
    lambda_model = work / "lambda" / "lambda_model.keras"
    lambda_model.parent.mkdir()
    subprocess.run([sys.executable, "-c", LAMBDA_MODEL, str(lambda_model)], check=True, env=env(),
                   capture_output=True)
    cases.append(predict_case("model with a Lambda layer (code)", lambda_model, {2}, "--backend", "keras"))

    c = Case("predict: --annotate on a full disk", {1})
    with tmpfs("64k") as mount:
        if mount is None:
            c.skipped = "no tmpfs (needs root)"
            cases.append(c)
        else:
            fill(mount, leave_free=2048)
            code, text = run("predict_emotion.py", "--image_path", photos, "--no-detect", "--model", model,
                             "--annotate", mount / "ann", "--jsonl")
            printed = [line for line in text.splitlines() if line.startswith("{")]
            cases.append(record(c, code, text, len(printed) == 6, f"{len(printed)} of 6 results printed"))

    c = Case("predict: corrupt, empty and bomb images", {1})
    bad = work / "bad_photos"
    shutil.copytree(photos, bad)
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "bomb.png").write_bytes(png_claiming(60_000, 60_000))
    (bad / "cut.png").write_bytes((photos / "p0.png").read_bytes()[:60])
    code, text = run("predict_emotion.py", "--image_path", bad, "--no-detect", "--model", model, "--jsonl")
    cases.append(record(c, code, text, sum(line.startswith("{") for line in text.splitlines()) == 6))

    c = Case("predict: corrupt video file", {2})
    (work / "bad.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"garbage" * 100)
    code, text = run("predict_emotion.py", "--video", work / "bad.mp4", "--model", model)
    cases.append(record(c, code, text))

    c = Case("evaluate: --out-dir on a full disk", {1, 2})
    with tmpfs("64k") as mount:
        if mount is None:
            c.skipped = "no tmpfs (needs root)"
            cases.append(c)
        else:
            fill(mount, leave_free=4096)
            code, text = run("evaluate_model.py", "--model", model, "--data-dir", work / "pre",
                             "--out-dir", mount / "eval", "--logs-dir", work / "eval-logs")
            cases.append(record(c, code, text, not list((mount / "eval").rglob("*tmp*"))
                                if (mount / "eval").exists() else True))

    c = Case("export: full disk beside the model", {1, 2})
    with tmpfs("300m") as mount:
        if mount is None:
            c.skipped = "no tmpfs (needs root)"
            cases.append(c)
        else:
            shutil.copy(model, mount / config.BEST_MODEL)
            shutil.copy(trained / "best_model.json", mount / "best_model.json")
            fill(mount, leave_free=1 << 20)
            before = snapshot(mount)
            code, text = run("export_model.py", "--model", mount / config.BEST_MODEL)
            after = {k: v for k, v in snapshot(mount).items()}
            cases.append(record(c, code, text, after == before))

    c = Case("evaluate: truncated arrays", {2})
    bad = work / "bad-eval"
    shutil.copytree(work / "pre", bad)
    (bad / "X_test.npy").write_bytes((bad / "X_test.npy").read_bytes()[:300])
    code, text = run("evaluate_model.py", "--model", model, "--data-dir", bad, "--logs-dir", work / "eval-logs")
    cases.append(record(c, code, text))
    return cases


# ---------------------------------------------------------------- issue 21: aliasing, concurrency, escapes, JSON

NESTED_JSON = "[" * 200_000 + "]" * 200_000
ANALYSED = "frame(s) analysed"  # the video summary line: its absence means no work was done


def write_clip(path: Path, frames: int = 12, size: tuple[int, int] = (160, 120)) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def video_frames(path: Path) -> int:
    import cv2

    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.isOpened() and capture.read()[0]:
        count += 1
    return count


def aliasing_cases(work: Path, photos: Path, model: Path) -> list[Case]:
    """An output that is, or would overwrite, an input: refused (exit 2) before any work."""
    cases = []
    photo_bytes = snapshot(photos)
    (work / "photos-link").symlink_to(photos)
    for name, target in (("the same folder", photos), ("a/../a", photos / ".." / photos.name),
                         ("a symlink to it", work / "photos-link")):
        c = Case(f"predict: --annotate into the input folder ({name})", {2})
        code, text = run("predict_emotion.py", "--image_path", photos, "--no-detect", "--model", model,
                         "--annotate", target)
        cases.append(record(c, code, text, snapshot(photos) == photo_bytes))
    clip = write_clip(work / "clip.avi")
    clip_bytes = clip.read_bytes()
    os.link(clip, work / "clip-hardlink.avi")
    for flag, target, name in (("--annotate", clip, "the input video"), ("--plot", clip, "the input video"),
                               ("--annotate", work / "clip-hardlink.avi", "a hard link to the input")):
        c = Case(f"video: {flag} onto {name}", {2})
        code, text = run("predict_emotion.py", "--video", clip, "--model", model, flag, target)
        cases.append(record(c, code, text, clip.read_bytes() == clip_bytes and ANALYSED not in text))
    return cases


def concurrency_cases(work: Path, data: Path, trained: Path, model: Path) -> list[Case]:
    """Two runs at once on one models folder (the second is refused, naming the first) or
    annotating to one video file (each writes its own temporary file)."""
    cases = []
    models = work / "shared-models"
    shutil.copytree(trained, models)
    old_best = (models / config.BEST_MODEL).read_bytes()
    a = ["--data-dir", data, "--models-dir", models, "--logs-dir", work / "shared-logs", *TINY_TRAINING, "--fresh"]
    first = subprocess.Popen(command("model_training.py", *a, "--run-name", "first"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env())
    lines = []
    for line in first.stdout:  # the first run holds the lock once it is training
        lines.append(line)
        if "Epoch 1/" in line:
            break
    c = Case("train: a second run on a models folder in use", {2})
    code, text = run("model_training.py", *a, "--run-name", "second")
    rest, _ = first.communicate(timeout=300)
    first_text = "".join(lines) + rest
    sidecar = json.loads((models / "best_model.json").read_text()) if (models / "best_model.json").is_file() else {}
    kept = (models / config.PREVIOUS_MODELS_DIR / config.BEST_MODEL)
    intact = (first.returncode == 0 and "in use by training run first" in text and sidecar.get("run_name") == "first"
              and kept.is_file() and kept.read_bytes() == old_best)
    cases.append(record(c, code, text, intact, "" if first.returncode == 0 else first_text.strip()[-90:]))

    clip = write_clip(work / "long.avi", frames=60)
    out = work / "concurrent" / "annotated.avi"
    c = Case("video: two runs annotating one file at once", {0})
    procs = [subprocess.Popen(command("predict_emotion.py", "--video", clip, "--model", model, "--annotate", out),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
             for _ in range(2)]
    texts = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    leftovers = [p.name for p in out.parent.iterdir() if p != out]
    cases.append(record(c, max(codes, key=abs), "".join(texts),
                        out.is_file() and video_frames(out) == 60 and not leftovers,
                        f"exits {codes}" + (f", left: {leftovers}" if leftovers else "")))
    return cases


def escape_cases(work: Path, data: Path) -> list[Case]:
    """Names that would take an output outside its folder."""
    cases = []
    logs = work / "escape" / "logs"
    for name in ("../../escaped", str(work / "escape-absolute"), "a/b", ".."):
        c = Case(f"train: --run-name {name if not name.startswith('/') else '/absolute/path'}", {2})
        code, text = run("model_training.py", "--data-dir", data, "--models-dir", work / "escape" / "models",
                         "--logs-dir", logs, *TINY_TRAINING[:-2], "--run-name", name)
        outside = [p for p in work.rglob("*escape*") if p.parent == work and p.name != "escape"]
        cases.append(record(c, code, text, not outside and not (work / "escape" / "models").exists()))
    return cases


def json_cases(work: Path, data: Path, trained: Path, photos: Path) -> list[Case]:
    """Nested (200,000 levels) or hostile JSON in every JSON file we read: one line, exit 2."""
    cases = []

    def copy_models(name: str, sidecar: str) -> Path:
        folder = work / f"json-{name}"
        shutil.copytree(trained, folder)
        (folder / "best_model.json").write_text(sidecar)
        return folder / config.BEST_MODEL

    for name, sidecar in (("nested", NESTED_JSON), ("class_names not strings", json.dumps(
            {"class_names": [True, 1, None, "a", "b", "c", "d"], "image_size": 48})),
            ("class_names repeated", json.dumps({"class_names": ["a"] * 7, "image_size": 48}))):
        model = copy_models(name.replace(" ", "-"), sidecar)
        before = snapshot(model.parent)
        for script, args in (("predict_emotion.py", ["--image_path", photos, "--no-detect", "--model", model]),
                             ("evaluate_model.py", ["--model", model, "--data-dir", data,
                                                    "--logs-dir", work / "json-eval-logs",
                                                    "--out-dir", work / "json-eval"]),
                             ("export_model.py", ["--model", model])):
            c = Case(f"{script.split('_')[0]}: sidecar .json {name}", {2})
            code, text = run(script, *args)
            cases.append(record(c, code, text, snapshot(model.parent) == before))

    bad = work / "json-meta"
    shutil.copytree(data, bad)
    (bad / config.META_FILE).write_text(NESTED_JSON)
    for script, args in (("model_training.py", ["--data-dir", bad, "--models-dir", work / "json-m",
                                                "--logs-dir", work / "json-l", *TINY_TRAINING]),
                         ("evaluate_model.py", ["--model", trained / config.BEST_MODEL, "--data-dir", bad,
                                                "--logs-dir", work / "json-eval-logs"])):
        c = Case(f"{script.split('_')[0].replace('model', 'train')}: meta.json nested", {2})
        code, text = run(script, *args)
        cases.append(record(c, code, text, not (work / "json-m").exists()))

    models = work / "json-resume" / "models"
    shutil.copytree(trained, models)
    (models / config.RESUME_DIR_NAME).mkdir()
    (models / config.RESUME_DIR_NAME / "state.json").write_text(NESTED_JSON)
    before = snapshot(models)
    c = Case("train: resume state.json nested", {2})
    code, text = run("model_training.py", "--data-dir", data, "--models-dir", models,
                     "--logs-dir", work / "json-resume" / "logs", *TINY_TRAINING)
    cases.append(record(c, code, text, snapshot(models) == before
                        and (models / config.RESUME_DIR_NAME / "state.json").read_text() == NESTED_JSON))
    return cases


def unwritable_cases(work: Path, data: Path, model: Path) -> list[Case]:
    """Outputs that cannot be written: refused in one line before any work."""
    cases = []
    clip = write_clip(work / "plot-clip.avi")
    (work / "plain-file").write_text("x")
    for name, plot in (("naming a folder", work), ("under a file", work / "plain-file" / "p.png")):
        c = Case(f"video: --plot {name}", {2})
        code, text = run("predict_emotion.py", "--video", clip, "--model", model, "--plot", plot)
        cases.append(record(c, code, text, ANALYSED not in text))
    c = Case("train: --models-dir under a file", {2})
    code, text = run("model_training.py", "--data-dir", data, "--models-dir", work / "plain-file" / "m",
                     "--logs-dir", work / "uw-logs", *TINY_TRAINING)
    cases.append(record(c, code, text, "Epoch" not in text))
    with tmpfs("1m", ",ro") as mount:
        for name in ("video: --plot on a read-only disk", "video: --annotate on a read-only disk",
                     "train: --logs-dir on a read-only disk", "train: --models-dir on a read-only disk"):
            c = Case(name, {2})
            if mount is None:
                c.skipped = "no tmpfs (needs root)"
                cases.append(c)
                continue
            if name.startswith("video"):
                flag = name.split()[1]
                code, text = run("predict_emotion.py", "--video", clip, "--model", model, flag,
                                 mount / ("p.png" if flag == "--plot" else "a.avi"))
                cases.append(record(c, code, text, ANALYSED not in text))
            else:
                ro = "logs" if "logs" in name else "models"
                dirs = {"models": work / "uw-models", "logs": work / "uw-logs"}
                dirs[ro] = mount / ro
                code, text = run("model_training.py", "--data-dir", data, "--models-dir", dirs["models"],
                                 "--logs-dir", dirs["logs"], *TINY_TRAINING, "--fresh")
                cases.append(record(c, code, text, "Epoch" not in text and "free some space" not in text))
    return cases


def odd_input_cases(work: Path, model: Path, photos: Path) -> list[Case]:
    """Camera indexes, truncated videos, still images dressed as videos, mismatched weights."""
    cases = []
    c = Case("video: --video 99999999999999999999", {2})
    code, text = run("predict_emotion.py", "--video", "99999999999999999999", "--model", model)
    cases.append(record(c, code, text))

    clip = write_clip(work / "whole.avi", frames=40)
    cut = work / "cut.avi"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    c = Case("video: truncated file (half its frames)", {0})
    code, text = run("predict_emotion.py", "--video", cut, "--model", model)
    cases.append(record(c, code, text, "truncated" in text))

    still = work / "still.mp4"
    shutil.copy(next(photos.iterdir()), still)
    c = Case("video: a still image renamed .mp4", {0, 2})
    code, text = run("predict_emotion.py", "--video", still, "--model", model)
    cases.append(record(c, code, text))

    mixed = work / "mixed-weights.keras"
    subprocess.run([sys.executable, "-c", MIXED_WEIGHTS, str(mixed)], check=True, env=env(), capture_output=True)
    c = Case("predict: .keras whose weights do not fit", {2})
    code, text = run("predict_emotion.py", "--image_path", photos, "--no-detect", "--model", mixed,
                     "--backend", "keras")
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    cases.append(record(c, code, text, len(errors) == 1 and "shape" in errors[0] and "Warning" not in text))
    return cases


MIXED_WEIGHTS = """
import sys, zipfile, keras
def small(n, path):
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Flatten()(inputs)
    keras.Model(inputs, keras.layers.Dense(n, activation="softmax", name="d")(x)).save(path)
small(7, sys.argv[1]); small(5, sys.argv[1] + ".other.keras")
members = {n: zipfile.ZipFile(sys.argv[1]).read(n) for n in zipfile.ZipFile(sys.argv[1]).namelist()}
members["model.weights.h5"] = zipfile.ZipFile(sys.argv[1] + ".other.keras").read("model.weights.h5")
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for n, b in members.items():
        z.writestr(n, b)
"""


def issue21_cases(work: Path, trained: Path) -> list[Case]:
    data, model, photos = work / "pre", trained / config.BEST_MODEL, work / "photos"
    return (aliasing_cases(work, photos, model) + concurrency_cases(work, data, trained, model)
            + escape_cases(work, data) + json_cases(work, data, trained, photos)
            + unwritable_cases(work, data, model) + odd_input_cases(work, model, photos))


LAMBDA_MODEL = """
import sys, keras
inputs = keras.Input((48, 48, 1))
x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
x = keras.layers.Flatten()(x)
outputs = keras.layers.Dense(7, activation="softmax")(x)
keras.Model(inputs, outputs).save(sys.argv[1])
"""


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true", help="keep the work folder and print its path")
    args = p.parse_args()
    print(f"CPU: {cpu_description()}; running as uid {os.geteuid()}")
    work = Path(tempfile.mkdtemp(prefix="fault-injection-"))
    started = time.time()
    try:
        cases = preprocessing_cases(work)
        more, trained = training_cases(work)
        cases += more + model_cases(work, trained) + issue21_cases(work, trained)
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = [[c.name, c.code if not c.skipped else "-", "/".join(map(str, sorted(c.expected))),
             "yes" if c.traceback else "no", {True: "yes", False: "NO", None: "-"}[c.intact],
             "skip" if c.skipped else "ok" if c.ok else "FAIL", c.skipped or c.note] for c in cases]
    print(format_table(["case", "exit", "expected", "traceback", "data intact", "result", "note"], rows))
    failures = sum(not c.ok for c in cases)
    skipped = sum(bool(c.skipped) for c in cases)
    print(f"\n{len(cases)} cases, {failures} failures, {skipped} skipped, in {time.time() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
