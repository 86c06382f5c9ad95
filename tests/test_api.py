"""The Python API (fervgg.EmotionRecognizer) on the shipped model: every input kind gives
the same answer, no face is [], bad inputs raise FervggError with the command line's
message, batches equal single calls, crops, the `fer` format, video rows."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, face_like
from fervgg import EmotionRecognizer, Face, FervggError, config, to_fer_format

SHARED = ROOT.parent / "shared"
OBAMA = SHARED / "photos" / "obama.jpg"
needs_photos = pytest.mark.skipif(not OBAMA.is_file(), reason="../shared/photos is not available")
CLIP = SHARED / "videos" / "single_face.mp4"


@pytest.fixture(scope="module")
def rec() -> EmotionRecognizer:
    return EmotionRecognizer()


def same_faces(a: list[Face], b: list[Face], atol: float = 1e-5) -> None:
    assert [f.box for f in a] == [f.box for f in b]
    assert [f.emotion for f in a] == [f.emotion for f in b]
    for fa, fb in zip(a, b):
        assert np.allclose(list(fa.probabilities.values()), list(fb.probabilities.values()), atol=atol)


@needs_photos
def test_path_pil_and_numpy_inputs_give_the_same_faces(rec):
    by_path = rec.predict(OBAMA)
    assert len(by_path) == 1
    face = by_path[0]
    assert face.emotion in config.CLASS_NAMES and 0 < face.confidence <= 1
    assert set(face.probabilities) == set(config.CLASS_NAMES)
    assert abs(sum(face.probabilities.values()) - 1) < 1e-3
    assert face.probabilities[face.emotion] == face.confidence
    x, y, w, h = face.box
    width, height = Image.open(OBAMA).size
    assert 0 <= x < x + w <= width and 0 <= y < y + h <= height

    image = Image.open(OBAMA)
    rgb = np.asarray(image.convert("RGB"))
    same_faces(by_path, rec.predict(str(OBAMA)))
    same_faces(by_path, rec.predict(image))
    same_faces(by_path, rec.predict(rgb))
    same_faces(by_path, rec.predict(rgb[..., ::-1].copy(), channels="bgr"))
    same_faces(by_path, rec.predict(rgb.astype(np.float32)))
    same_faces(by_path, rec.predict(rgb.astype(np.float32) / 255))  # 0-1 floats, as matplotlib reads a PNG
    gray = rec.predict(np.asarray(image.convert("L")))  # colour is not needed to read an emotion
    assert [f.emotion for f in gray] == [face.emotion] and len(gray) == 1


@needs_photos
def test_file_bytes_and_binary_file_objects_give_the_same_faces(rec, tmp_path, monkeypatch):
    """An app's upload arrives as bytes or as a file object (io.BytesIO, a framework's upload)."""
    by_path = rec.predict(OBAMA)
    data = OBAMA.read_bytes()
    same_faces(by_path, rec.predict(data))
    same_faces(by_path, rec.predict(io.BytesIO(data)))
    with open(OBAMA, "rb") as opened:
        same_faces(by_path, rec.predict(opened))
    with open(OBAMA, encoding="latin-1") as text, pytest.raises(FervggError, match="binary mode"):
        rec.predict(text)
    monkeypatch.setattr(config, "MAX_FILE_BYTES", 1000)  # a huge stream is refused, never read whole
    with pytest.raises(FervggError, match="file too large"):
        rec.predict(io.BytesIO(data))


def test_a_url_an_empty_string_and_a_folder_are_named_as_such(rec, tmp_path):
    for image, words in (("https://example.com/face.jpg", "https://example.com/face.jpg is a URL: images are "
                          "read from local files only"), ("", "an empty string is not an image path"),
                         ("  ", "an empty string"), (str(tmp_path), "is a folder: predict takes one image"),
                         (tmp_path, "is a folder")):
        with pytest.raises(FervggError, match=words):
            rec.predict(image)


def test_no_face_is_an_empty_list(rec):
    assert rec.predict(np.full((240, 320, 3), 128, np.uint8)) == []
    assert rec.predict_many([np.zeros((100, 100), np.uint8)] * 2) == [[], []]


def test_detect_false_classifies_the_whole_image(rec):
    face = face_like(3)
    [whole] = rec.predict(face, detect=False)
    assert whole.box == (0, 0, 48, 48)
    [crop] = rec.predict_crops(face[None])
    same_faces([whole], [crop])


def test_predict_many_equals_single_calls(rec):
    images = [face_like(s) for s in range(5)]
    many = rec.predict_many(images, batch_size=2, detect=False)
    assert len(many) == 5
    for image, faces in zip(images, many):
        same_faces(rec.predict(image, detect=False), faces, atol=1e-4)


def test_predict_crops_shapes(rec):
    crops = np.stack([face_like(s) for s in range(4)])
    assert len(rec.predict_crops(crops)) == 4
    same_faces(rec.predict_crops(crops), rec.predict_crops(crops[..., None]))
    same_faces(rec.predict_crops(crops), rec.predict_crops(crops / 255.0))
    assert rec.predict_crops(np.zeros((0, 48, 48), np.uint8)) == []
    with pytest.raises(FervggError, match=r"must be \(N, 48, 48\)"):
        rec.predict_crops(np.zeros((2, 40, 40), np.uint8))


def cli_error(path) -> str:
    """The line predict_emotion.py prints for a file it cannot use."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict_emotion.py"), "--image_path", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    [line] = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    return line.removeprefix("error: ").removesuffix(" (skipped)")


def test_bad_inputs_raise_our_error_with_the_cli_message(rec, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    good = io.BytesIO()
    Image.fromarray(face_like(1)).save(good, format="JPEG")
    corrupt.write_bytes(good.getvalue()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(big)
    small = EmotionRecognizer(max_megapixels=5)
    for recognizer, path in ((rec, corrupt), (rec, text), (small, big)):
        with pytest.raises(FervggError) as exc:
            recognizer.predict(path)
        assert str(path) in str(exc.value)
    # The command line prints the same message (the big image: at its own limit).
    for path in (corrupt, text):
        with pytest.raises(FervggError) as exc:
            rec.predict(path)
        assert str(exc.value) == cli_error(path)
    with pytest.raises(FervggError, match="image too large"):
        small.predict(Image.new("L", (3000, 2000)))
    with pytest.raises(FervggError, match="path, a PIL image or a numpy array"):
        rec.predict(42)
    with pytest.raises(FervggError, match="shape"):
        rec.predict(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(FervggError, match="channels"):
        rec.predict(face_like(1), channels="hsv")
    with pytest.raises(FervggError, match="model not found"):
        EmotionRecognizer(tmp_path / "missing.keras")
    for threads in (0, -2, 1.5, True):  # LiteRT would name the model file as the culprit
        with pytest.raises(FervggError, match="threads must be a whole number"):
            EmotionRecognizer(threads=threads)


def test_fer_format_has_fer_keys_and_types(rec):
    faces = rec.predict(face_like(2), detect=False)
    out = to_fer_format(faces)
    assert isinstance(out, list) and len(out) == 1
    assert set(out[0]) == {"box", "emotions"}
    assert isinstance(out[0]["box"], list) and len(out[0]["box"]) == 4
    assert all(type(v) is int for v in out[0]["box"])
    assert set(out[0]["emotions"]) == set(config.CLASS_NAMES)
    assert all(type(v) is float for v in out[0]["emotions"].values())
    assert faces[0].to_dict()["box"] == {"x": 0, "y": 0, "w": 48, "h": 48}


@pytest.mark.skipif(not CLIP.is_file(), reason="../shared/videos is not available")
def test_video_rows_are_the_cli_rows(rec):
    rows = list(rec.analyse_video(CLIP, every=4))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict_emotion.py"), "--video", str(CLIP),
                          "--every", "4", "--csv"], capture_output=True, text=True, check=True)
    cli = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == len(cli) > 10
    for ours, theirs in zip(rows, cli):
        assert list(ours) == list(theirs)
        assert ours["frame"] == int(theirs["frame"]) and ours["emotion"] == theirs["emotion"]
        assert abs(ours["confidence"] - float(theirs["confidence"])) < 1e-5


def test_tta_default_is_the_config_one_for_photos_and_video_stays_one_view(rec, monkeypatch):
    crops = np.stack([face_like(i) for i in range(4)])
    ten = EmotionRecognizer(tta=True)
    monkeypatch.setattr(config, "PHOTO_TTA", True)
    same_faces(EmotionRecognizer().predict_crops(crops), ten.predict_crops(crops), atol=0)
    monkeypatch.setattr(config, "PHOTO_TTA", False)
    same_faces(EmotionRecognizer().predict_crops(crops), rec.predict_crops(crops), atol=0)
    if CLIP.is_file():  # one view per face on video, whatever the recognizer's TTA
        assert list(ten.analyse_video(CLIP, every=10)) == list(rec.analyse_video(CLIP, every=10))


@needs_photos
def test_the_wheel_works_outside_the_repo(tmp_path):
    """pip install of a clone gives a working package anywhere: the shipped model travels
    inside it. Offline: the wheel is built without build isolation and installed with
    --no-deps into a folder of its own (this venv supplies the dependencies)."""
    import shutil

    source = tmp_path / "clone"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    shutil.copytree(ROOT / "models" / "pretrained", source / "models" / "pretrained")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("fervgg-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import fervgg; from fervgg import EmotionRecognizer; print(fervgg.__file__); "
            f"print(EmotionRecognizer().predict({str(OBAMA)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    location, faces = out.stdout.splitlines()[:2]
    assert location.startswith(str(tmp_path / "site"))
    assert faces.startswith("[Face(box=") and faces.count("Face(") == 1


@pytest.mark.skipif(not (OBAMA.is_file() and CLIP.is_file()), reason="../shared is not available")
def test_the_readme_example_runs(capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    photos = OBAMA.parent
    for name, real in (("photo.jpg", OBAMA), ("a.jpg", photos / "biden.jpg"), ("b.jpg", photos / "two_people.jpg"),
                       ("clip.mp4", CLIP)):
        code = code.replace(f'"{name}"', repr(str(real)))
    frame = np.asarray(Image.open(OBAMA).convert("RGB"))[..., ::-1].copy()
    crops = np.stack([face_like(s) for s in range(3)])
    exec(compile(code, "README.md", "exec"), {"frame": frame, "crops": crops})
    out = capsys.readouterr().out
    assert "happy" in out and "(" in out  # obama.jpg smiles; boxes are printed as tuples
