"""emotion_model.load_model on files that are not what they claim: one clear message each
(issue 14, points 9, 10 and 12)."""

import pytest

from fervgg import emotion_model
from fervgg.common import FervggError
from conftest import script, BLOCKS, save


def test_a_folder_is_named_as_a_folder(tmp_path):
    predict_emotion = script("predict_emotion")

    with pytest.raises(FervggError, match="is a folder: pass the model file in it"):
        emotion_model.load_model(tmp_path)
    with pytest.raises(FervggError, match="is a folder: pass the model file in it"):
        predict_emotion.main(["--image_path", str(save(tmp_path / "face.png", BLOCKS)), "--model", str(tmp_path)])


def test_a_truncated_keras_file_is_not_reported_as_missing(tiny_model, tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(tiny_model.path.read_bytes()[:5000])
    with pytest.raises(FervggError, match="exists but is not a valid Keras model file") as caught:
        emotion_model.load_model(broken)
    assert "not found" not in str(caught.value).lower()


def test_a_lambda_layer_model_is_refused_without_advertising_the_override(tmp_path):
    import keras

    inputs = keras.Input((48, 48, 1))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(FervggError, match="contains code") as caught:
        emotion_model.load_model(path)
    assert "safe_mode=False" not in str(caught.value)


@pytest.mark.parametrize("content", [b"[]", b"\xff\xfe{", b'{"class_names": "angry"}'])
def test_a_damaged_sidecar_is_one_line_error_in_predict(tiny_model, tmp_path, content):
    import shutil

    predict_emotion = script("predict_emotion")

    model = tmp_path / "m.keras"
    shutil.copy(tiny_model.path, model)
    shutil.copy(tiny_model.path.with_suffix(".tflite"), model.with_suffix(".tflite"))
    model.with_suffix(".json").write_bytes(content)
    with pytest.raises(FervggError, match="sidecar.*is damaged"):
        predict_emotion.main(["--image_path", str(save(tmp_path / "face.png", BLOCKS)), "--model", str(model)])


def test_newlines_in_file_names_do_not_break_output_lines(tiny_model, tmp_path, capsys):
    """Issue 14, point 16: one output line per face and per bad file, whatever the name."""
    data_processing = script("data_processing")
    predict_emotion = script("predict_emotion")

    folder = tmp_path / "photos"
    save(folder / "two\nlines.png", BLOCKS)
    (folder / "bad\nfile.png").write_bytes(b"not an image")
    code = predict_emotion.main(["--image_path", str(folder), "--model", str(tiny_model.path), "--no-detect"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.count("\n") == 1 and "two\\nlines.png" in out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad\\nfile.png" in errors[0]

    data = tmp_path / "data"
    for name in ("a", "b"):
        save(data / "train" / name / "ok.png", BLOCKS)
        save(data / "train" / name / "ok2.png", BLOCKS[::-1].copy())
    (data / "train" / "a" / "bad\nname.png").write_bytes(b"garbage")
    assert data_processing.main(["--data-dir", str(data), "--out-dir", str(tmp_path / "out"), "--workers", "1",
                                 "--val-fraction", "0.25", "--image-size", "16"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if "bad" in line and "name.png" in line]
    assert listed == [f"  {data / 'train' / 'a'}/bad\\nname.png: not an image (format not recognised)"]


def test_every_model_loader_says_the_same_for_a_folder_and_a_missing_file(tmp_path):
    """One set of messages: Keras, LiteRT and open_classifier (used by evaluation, export and
    prediction) name a folder as a folder and a missing file as not found."""
    from fervgg.classifiers import open_classifier
    from fervgg.litert_runtime import LiteRTClassifier

    folder = tmp_path / "models.tflite"
    folder.mkdir()
    for load in (emotion_model.load_model, LiteRTClassifier, open_classifier):
        with pytest.raises(FervggError, match="is a folder: pass the model file in it"):
            load(folder)
        with pytest.raises(FervggError, match="model not found: .*pass `model` PATH"):
            load(tmp_path / "absent.tflite")
