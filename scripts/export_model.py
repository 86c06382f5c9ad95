"""Export a trained .keras model to LiteRT (.tflite) for fast prediction.

    models/best_model.keras -> models/best_model.tflite   (beside it, same name)

The .tflite takes the same input as the .keras model (raw grayscale pixels 0-255,
shape (N, S, S, 1), any N) and gives the same probabilities. Before it replaces an
existing file, its outputs are compared with Keras's on random inputs (same top class,
largest absolute difference <= --tolerance). The export is recorded in the model's
JSON sidecar (models/best_model.json), which prediction also reads the class names from.

To publish a model (as models/pretrained/ is made): --out-dir and --name write a copy of
the .keras, its sidecar and the .tflite there; --float16 stores the weights of both at
half size (computation stays float32 in our scripts; both are checked against the
float32 original).

    python scripts/export_model.py                       # the default model
    python scripts/export_model.py --model models/fine_tuned_model.keras
    python scripts/export_model.py --model runs/best_model.keras --float16 \\
        --out-dir models/pretrained --name fer2013_vgg16 --int8-data preprocessed_data

--int8-data also writes NAME.int8.tflite: int8 weights and activations (full-integer
post-training quantisation, calibrated on --int8-samples training images of that folder),
kept only when its accuracy on the folder's test split (else val) is within --int8-max-loss
of the float .tflite, on one view and with ten-crop TTA; else dynamic-range quantisation
(int8 weights only) is tried the same way. Prediction prefers the int8 file (--backend auto).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import HelpFormatter, as_flags, number, run_cli
from fervgg import config
from fervgg.common import FervggError
from fervgg.export import ExportSettings, export


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="the .keras model to export (default: "
                   "fine_tuned_model.keras in --models-dir if present, else best_model.keras)")
    p.add_argument("--models-dir", type=Path, default=config.MODELS_DIR, help="where the default model is looked for")
    p.add_argument("--check-samples", type=number(int, 1, 10_000), default=config.EXPORT_CHECK_SAMPLES,
                   help="random inputs on which LiteRT and Keras must agree")
    p.add_argument("--tolerance", type=number(float, 0, 1), default=config.EXPORT_TOLERANCE,
                   help="largest allowed absolute difference of probabilities")
    p.add_argument("--seed", type=number(int, 0), default=config.SEED)
    pub = p.add_argument_group("publishing a copy")
    pub.add_argument("--out-dir", type=Path, default=None,
                     help="write NAME.keras, NAME.json and NAME.tflite here instead of the .tflite beside the model")
    pub.add_argument("--name", default=None, help="file name (no suffix) of the copy in --out-dir "
                     "(default: the model's own)")
    pub.add_argument("--float16", action="store_true",
                     help="store the weights as float16: files half the size; the allowed difference is then "
                     f"--tolerance or {config.EXPORT_TOLERANCE_FLOAT16:g}, whichever is larger")
    q = p.add_argument_group("int8 model")
    q.add_argument("--int8-data", type=Path, default=None,
                   help="a preprocessed data folder: also write NAME.int8.tflite, calibrated on its train split and "
                   "kept only if accurate enough on its test split (see above)")
    q.add_argument("--int8-samples", type=number(int, 1, 100_000), default=config.INT8_SAMPLES,
                   help="training images that calibrate the int8 model")
    q.add_argument("--int8-max-loss", type=number(float, 0, 1), default=config.INT8_MAX_LOSS,
                   help="accuracy (a fraction) the int8 model may lose against the float one, one view and ten-crop")
    args = p.parse_args(argv)
    try:
        ExportSettings(**vars(args))
    except FervggError as exc:
        p.error(as_flags(str(exc)))
    return args


def main(argv=None) -> int:
    result = export(ExportSettings(**vars(parse_args(argv))))
    print(f"predict with: python scripts/predict_emotion.py --model {result.keras} --image_path PHOTO"
          + (f"  (runs {result.int8.name})" if result.int8 else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
