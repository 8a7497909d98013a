"""Where training runs: a tf.distribute strategy and a dtype policy, for fine-tuning and
distillation alike (`finetune.distribution`, `finetune.precision`).

Strategies are TensorFlow's own; Keras's `fit` runs under them unchanged, but multi_worker:
  auto          TPUStrategy when a TPU is attached (Colab TPU), MirroredStrategy when more
                than one GPU is visible, else the default strategy (one device);
  none          the default strategy;
  mirrored      MirroredStrategy over the visible GPUs, or over the logical CPU devices when
                there is no GPU (how the tests run it on one machine);
  multi_worker  MultiWorkerMirroredStrategy over the workers TF_CONFIG names (each worker
                runs the same command);
  tpu           TPUStrategy; an error when no TPU is attached.
`batch_size` is the global batch: each of the N replicas gets batch_size / N examples.

Precision applies to the models being trained (their `dtype`), never Keras's global policy:
float32; mixed_float16 (GPUs); mixed_bfloat16 (TPUs, Ampere and newer GPUs). Without a GPU or
TPU a mixed setting prints one warning and trains in float32.

Example:
    >>> placement = place("auto", batch_size=16)
    >>> with placement.strategy.scope():
    ...     causal_lm = load_causal_lm(preset, dtype=policy("float32"))
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import tensorflow as tf

from pipeline.config import Distribution, Precision
from pipeline.errors import ConfigError

CPU_DEVICES = "GPT2_PIPELINE_CPU_DEVICES"
TPU_DEVICE = "/dev/accel0"  # a TPU VM's first chip


@dataclass(frozen=True)
class Placement:
    strategy: tf.distribute.Strategy
    kind: Distribution  # resolved: AUTO never appears here
    replicas: int
    per_replica_batch: int

    @property
    def name(self) -> str:  # TensorFlow's class behind MultiWorkerMirroredStrategy is
        return ("MultiWorkerMirroredStrategy"  # CollectiveAllReduceStrategy: say the API name
                if self.kind == Distribution.MULTI_WORKER else type(self.strategy).__name__)

    def describe(self) -> dict:
        return {"strategy": self.name, "distribution": self.kind,
                "replicas": self.replicas, "per_replica_batch": self.per_replica_batch}

    def line(self) -> str:
        return (f"distribution: {self.kind} ({self.name}), "
                f"{self.replicas} replica(s), {self.per_replica_batch} examples per replica")


def place(distribution: Distribution, batch_size: int, setting: str = "finetune") -> Placement:
    """Returns the strategy for `distribution`; one-line ConfigError when it cannot run here."""
    split_cpu()
    kind = resolve(distribution)
    strategy = _strategy(kind)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(f"{setting}.batch_size: {batch_size} is not divisible by the "
                          f"{replicas} replicas of {kind}; use a multiple of {replicas}")
    return Placement(strategy, kind, replicas, batch_size // replicas)


def resolve(distribution: Distribution) -> Distribution:
    """Returns the strategy kind `distribution` means on this machine (resolves auto)."""
    kind = Distribution(distribution)  # the config's is one already; a benchmark's is a str
    if kind != Distribution.AUTO:
        return kind
    if tpu_attached():
        return Distribution.TPU
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return Distribution.MIRRORED
    return Distribution.NONE


def split_cpu() -> None:
    """With $GPT2_PIPELINE_CPU_DEVICES=N, splits the CPU into N logical devices, so that
    multi-device code runs on one CPU (the tests' way to run `mirrored` without GPUs)."""
    count = int(os.environ.get(CPU_DEVICES, "0") or 0)
    cpu = tf.config.list_physical_devices("CPU")[0]
    if count > 1 and len(tf.config.get_logical_device_configuration(cpu) or []) != count:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        except RuntimeError as e:  # TensorFlow already started in this process
            raise ConfigError(f"{CPU_DEVICES}={count} must be set before TensorFlow "
                              f"starts ({e})") from e


def tpu_attached() -> bool:
    """Whether a TPU is reachable: Colab (COLAB_TPU_ADDR), TPU_NAME, or a TPU VM's devices."""
    return bool(os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME")
                or os.path.exists(TPU_DEVICE) or tf.config.list_physical_devices("TPU"))


def _strategy(kind: Distribution) -> tf.distribute.Strategy:
    if kind == Distribution.NONE:
        return tf.distribute.get_strategy()
    if kind == Distribution.MIRRORED:
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if kind == Distribution.MULTI_WORKER:
        _check_tf_config()
        # Keras 3's fit fails under this strategy (tensorflow/tensorflow#72388); the one
        # training loop (`loop.TrainingStep`) runs under every strategy, this one included.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if not tpu_attached():
        raise ConfigError("finetune.distribution: tpu, but no TPU is attached (Colab: Runtime > "
                          "Change runtime type > TPU); use auto or none")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _check_tf_config() -> None:
    raw = os.environ.get("TF_CONFIG", "")
    try:
        spec = json.loads(raw) if raw else None
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e.msg}); README: several hosts") from e
    if not spec or "cluster" not in spec or "task" not in spec:
        raise ConfigError("finetune.distribution: multi_worker needs TF_CONFIG with 'cluster' "
                          "and 'task' set on every worker (README: several hosts)")


def policy(precision: Precision) -> str:
    """Returns the dtype policy name for the models being trained (float32 on CPU only)."""
    precision = Precision(precision)
    if precision != Precision.FLOAT32 and not (tf.config.list_physical_devices("GPU")
                                               or tpu_attached()):
        warnings.warn(f"finetune.precision is {precision} but no GPU or TPU is visible: "
                      f"training in float32")
        return str(Precision.FLOAT32)
    return str(precision)
