"""Average the weights of several checkpoints of one training run into one model.

The mean of the last epochs' weights of a run whose learning rate decays often scores
better than any one epoch (stochastic weight averaging, at no training cost). Batch-norm
statistics are averaged too, or, with --bn-data, measured again by the averaged network on
training images (usually better: judge both on validation data).

    python scripts/model_training.py ... --keep-epochs     # keeps models/epochs/<run name>/*.keras
    python scripts/average_models.py --models models/epochs/RUN --last 10 \\
        --sidecar models/best_model.keras --bn-data preprocessed_data --out models/averaged.keras
    python scripts/evaluate_model.py --model models/averaged.keras --split val

The models must have one architecture; the sidecar (class names, training record) is
copied from --sidecar (default: the last model's) with the averaged files recorded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import HelpFormatter, number, parse_settings, run_cli
from fervgg import config
from fervgg.averaging import AverageSettings, average


def parse_args(argv=None) -> AverageSettings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--models", type=Path, nargs="+", required=True,
                   help="the .keras checkpoints (two or more), or one folder of kept epochs "
                   "(models/epochs/<run name>/: its checkpoints in training order)")
    p.add_argument("--last", type=number(int, 2, 100_000), default=None, metavar="N",
                   help="average only the last N of --models (e.g. the last 10 epochs of a folder)")
    p.add_argument("--out", type=Path, required=True, help="the averaged .keras model to write")
    p.add_argument("--sidecar", type=Path, default=None,
                   help="a model of the same run whose JSON sidecar is copied (default: the last of --models)")
    p.add_argument("--bn-data", type=Path, default=None,
                   help="a preprocessed data folder: re-measure batch-norm statistics on its train split")
    p.add_argument("--bn-images", type=number(int, 1, 10_000_000), default=4096,
                   help="training images for --bn-data")
    p.add_argument("--batch-size", type=number(int, 1, 65_536), default=config.EVAL_BATCH_SIZE)
    p.add_argument("--seed", type=number(int, 0), default=config.SEED)
    return parse_settings(p, argv, AverageSettings)


def main(argv=None) -> int:
    average(parse_args(argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
