"""The machine a training run uses: the precision policy (bfloat16 only where the CPU has
the instructions for it) and the distribution strategy. Imports TensorFlow when called."""

from __future__ import annotations

import os
from pathlib import Path

from fervgg.common import cpu_description, onednn_enabled

PRECISIONS = ("auto", "mixed_bfloat16", "mixed_float16", "float32")
DISTRIBUTE_MODES = ("auto", "none", "mirrored", "multi-worker")
# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below its bfloat16 kernels: bf16 would be emulated.
ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_bf16() -> bool:
    """bfloat16 instructions that oneDNN may use (not capped by ONEDNN_MAX_CPU_ISA)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ISA_WITHOUT_BF16:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def setup_hardware(precision: str = "auto", distribute: str = "auto", logical_cpus: int = 0):
    """Set Keras's global precision policy and pick a distribution strategy (see PRECISIONS,
    DISTRIBUTE_MODES; logical_cpus > 1 splits the CPU to exercise the mirrored path without
    GPUs); returns (strategy, a one-line description of the hardware)."""
    import keras
    import tensorflow as tf

    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_cpus)])
    gpus = tf.config.list_physical_devices("GPU")
    if precision == "auto":
        precision = "mixed_float16" if gpus else "mixed_bfloat16" if cpu_has_bf16() else "float32"
    keras.mixed_precision.set_global_policy(precision)

    mode = distribute
    if mode == "auto":
        mode = ("multi-worker" if os.environ.get("TF_CONFIG") else
                "mirrored" if len(gpus) > 1 or logical_cpus > 1 else "none")
    if mode == "multi-worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif mode == "mirrored":
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.get_strategy()
    onednn = {True: "on", False: "off", None: "unknown"}[onednn_enabled()]
    where = f"{len(gpus)} GPU(s)" if gpus else f"CPU ({cpu_description()}; oneDNN {onednn})"
    desc = f"{where}, precision {precision}" + (
        f", {type(strategy).__name__} over {strategy.num_replicas_in_sync} replicas" if mode != "none" else "")
    return strategy, desc
