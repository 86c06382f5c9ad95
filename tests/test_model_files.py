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


def test_a_tflite_given_where_a_keras_model_is_needed_is_named_as_such(tmp_path):
    """Averaging, export and --initial-model read Keras models; a .tflite there got Keras's
    "File format not supported ... legacy SavedModel" paragraph."""
    lite = tmp_path / "model.tflite"
    lite.write_bytes(b"TFL3" + bytes(60))
    with pytest.raises(FervggError, match=r"model.tflite is a LiteRT model: this step needs a Keras model \(.keras\)"):
        emotion_model.load_model(lite)


# ---------------------------------------------------------------- issue 21: hostile files

NESTED = "[" * 200_000 + "]" * 200_000


def _small_keras(path, units: int, extra: dict | None = None, weights_from=None):
    """A tiny Dense model saved as .keras; `extra` zip members added, `weights_from`: another
    .keras whose weights file replaces this one's."""
    import zipfile

    import keras

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(units, name="d")(inputs)).save(path)
    if extra or weights_from:
        members = {n: zipfile.ZipFile(path).read(n) for n in zipfile.ZipFile(path).namelist()}
        if weights_from:
            members["model.weights.h5"] = zipfile.ZipFile(weights_from).read("model.weights.h5")
        members.update(extra or {})
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    return path


def test_nested_json_in_every_file_we_read_is_one_line(tiny_model, tmp_path):
    import os
    import shutil

    from fervgg import artifacts, classifiers, config
    from fervgg.resume import ResumeState

    model = tmp_path / "m.keras"
    shutil.copy(tiny_model.path, model)
    model.with_suffix(".json").write_text(NESTED)
    with pytest.raises(FervggError, match="sidecar.*is damaged.*nested"):
        emotion_model.model_info(model)
    lite = shutil.copy(tiny_model.path.with_suffix(".tflite"), model.with_suffix(".tflite"))
    os.utime(lite, (1, 1))  # older than the .keras: the sidecar is consulted
    assert classifiers.export_is_current(model, lite) is False
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / config.META_FILE).write_text(NESTED)
    with pytest.raises(FervggError, match="not readable JSON"):
        artifacts.read_meta(tmp_path / "data")
    state = ResumeState(tmp_path / "models")
    state.dir.mkdir(parents=True)
    state.json_path.write_text(NESTED)
    with pytest.raises(FervggError, match="resume state .* is damaged"):
        state.load()


@pytest.mark.parametrize("names", [[True, "b", "c"], ["a", "a", "b"], ["a", "", "b"], ["a", " ", "b"],
                                   ["a", None, "b"]])
def test_sidecar_class_names_must_be_distinct_non_empty_strings(tmp_path, names):
    import json

    model = tmp_path / "m.keras"
    model.with_suffix(".json").write_text(json.dumps({"class_names": names, "image_size": 48}))
    with pytest.raises(FervggError, match="class_names.*distinct"):
        emotion_model.model_info(model)


def test_weights_that_do_not_fit_name_the_cause_and_no_keras_warning_leaks(tmp_path):
    import warnings

    other = _small_keras(tmp_path / "b.keras", 4)
    mixed = _small_keras(tmp_path / "mixed.keras", 3, weights_from=other)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FervggError) as err:
            emotion_model.load_model(mixed)
    message = str(err.value)
    assert "\n" not in message and "shape" in message and "(4, 3)" in message, message
    assert not message.rstrip().endswith(":")
    assert not [w for w in caught if "keras" in str(w.filename)], [str(w.message) for w in caught]


def test_zip_members_outside_the_archive_give_no_python_warning(tmp_path):
    import warnings

    path = _small_keras(tmp_path / "dots.keras", 3, extra={"../evil.txt": b"x"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            emotion_model.load_model(path)
        except FervggError:
            pass
    assert not caught, [str(w.message) for w in caught]
    assert not (tmp_path.parent / "evil.txt").exists()


def test_a_tfsmlayer_model_is_refused_naming_what_it_contains(tmp_path):
    import keras
    import tensorflow as tf

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x):
            return {"y": x * 2}

    saved = Double()
    tf.saved_model.save(saved, str(tmp_path / "sm"), signatures={"serving_default": saved.__call__})
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.TFSMLayer(str(tmp_path / "sm"), call_endpoint="serving_default")(inputs)) \
        .save(tmp_path / "tfsm.keras")
    with pytest.raises(FervggError, match="TFSMLayer") as err:
        emotion_model.load_model(tmp_path / "tfsm.keras")
    assert "Lambda" not in str(err.value) and "safe_mode=False" not in str(err.value)


@pytest.mark.parametrize("sidecar", [NESTED, '{"class_names": [true, "a", "b", "c", "d", "e", "f"], "image_size": 48}'])
def test_export_refuses_a_hostile_sidecar_before_writing_anything(tiny_model, tmp_path, sidecar):
    import shutil

    from fervgg.export import ExportSettings, export

    model = tmp_path / "m.keras"
    shutil.copy(tiny_model.path, model)
    model.with_suffix(".json").write_text(sidecar)
    with pytest.raises(FervggError, match="sidecar.*is damaged"):
        export(ExportSettings(model=model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.keras"]


def test_native_log_noise_is_dropped_and_everything_else_passes(capfd):
    import os

    from fervgg.common import filtered_stderr

    with filtered_stderr("harmless line"):
        os.write(2, b"E0000 util.cc:131] a harmless line from C++\nE0000 a real native error\n")
    err = capfd.readouterr().err
    assert "a real native error" in err and "harmless" not in err


def test_loading_float16_weights_prints_no_dt_half_line(tmp_path):
    """On CPUs without AVX-512, TF logs 'E0000 ... oneDNN supports DT_HALF only ...' once per
    process, at the first float16 operation: loading the shipped model's float16 weights. Users
    cannot act on it, so load_model does not show it. Fresh processes, as a user's run."""
    import subprocess
    from pathlib import Path
    import sys

    full = emotion_model.build_model(7, 32, "none", dense_units=8)
    full.save(tmp_path / "full.keras")
    path = tmp_path / "half.keras"
    emotion_model.with_policy(full, "float16").save(path)

    def stderr_of(code: str, file: Path = path) -> str:
        proc = subprocess.run([sys.executable, "-c", f"from fervgg import emotion_model as m; {code}({str(file)!r})"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    unfiltered = stderr_of("m.import_tensorflow(); m.keras_load")  # shows whether this CPU logs it at all
    assert "DT_HALF" not in stderr_of("m.load_model")
    # export_model.py --float16 casts a float32 model to float16 (the first float16 operation there)
    assert "DT_HALF" not in stderr_of("m.import_tensorflow(); (lambda p: m.with_policy(m.keras_load(p), 'float16'))",
                                      tmp_path / "full.keras")
    if "DT_HALF" not in unfiltered:
        pytest.skip("this CPU does not log the DT_HALF line (AVX-512): nothing to hide here")


def test_a_model_and_its_exports_share_one_sidecar(tmp_path):
    """NAME.keras, NAME.tflite and NAME.int8.tflite are described by NAME.json (the service's
    /v1/model and evaluation's metrics.json read it for whichever file runs)."""
    for name in ("fer.keras", "fer.tflite", "fer.int8.tflite"):
        assert emotion_model.sidecar_path(tmp_path / name) == tmp_path / "fer.json"
