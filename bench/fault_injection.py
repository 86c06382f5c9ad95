"""Fault injection: the four scripts (and export) under faults, each checked to fail cleanly.

For every case: the exit code against the one expected, whether a Python traceback
reached the user, and whether the data that was there before is intact (arrays and
models compared byte for byte with a snapshot, resumed runs checked for whole epochs).
Faults: Ctrl+C and SIGKILL at chosen points of preprocessing and training, full disks
(small tmpfs mounts; those cases are skipped where mounting is not allowed, e.g. not
root), and corrupt files of every kind the pipeline reads.

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
def tmpfs(size: str):
    """A fresh tmpfs of `size` (e.g. "2m"), or None where mounting is not allowed."""
    mount = Path(tempfile.mkdtemp(prefix="fault-tmpfs-"))
    try:
        ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
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
                                 sig=signal.SIGINT, after_s=0.6)
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
        cases += more + model_cases(work, trained)
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
