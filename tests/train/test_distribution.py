"""tf.distribute strategies and dtype policies for training (finetune.distribution, .precision).

Multi-device runs use logical CPU devices ($GPT2_PIPELINE_CPU_DEVICES): no GPU or TPU here.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import Distribution
from pipeline.errors import ConfigError
from pipeline.train import distribution
from pipeline.train.distribution import place, policy, resolve

ROOT = Path(__file__).resolve().parents[2]
# Mirrored replicas add their gradients in another order than one device sums them, so the
# float32 losses drift apart by rounding only: well under 1e-3 after a few steps.
LOSS_RTOL = 1e-3


@pytest.fixture
def config(tiny_preset, tmp_path, kitchen_lines):
    data = tmp_path / "kitchen.txt"
    data.write_text("\n\n".join(kitchen_lines[:40]), encoding="utf-8")
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  preset: {tiny_preset}\ndata:\n  path: {data}\n  packing: false\n"
                    "finetune:\n  sequence_length: 32\n  batch_size: 4\n  epochs: 2\n"
                    "  max_steps: 6\n  learning_rate: 3.0e-3\n  keep_checkpoints: true\n"
                    "eval:\n  max_length: 12\n  prompts: [Tomato soup.]\n")
    return path


def finetune_cli(config, run_dir, *sets, env=None, wait=True):
    args = [sys.executable, "-m", "pipeline", "finetune", str(config), "--run-dir", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def step_losses(run_dir) -> list[float]:
    latest = Path(run_dir) / "finetune" / "checkpoints" / "latest.json"
    return json.loads(latest.read_text())["state"]["losses"]


def test_auto_resolves_by_the_devices_present(monkeypatch):
    devices = {"GPU": [], "TPU": []}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: devices[kind])
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.setattr(distribution, "TPU_DEVICE", "/nonexistent/accel0")
    assert resolve("auto") == Distribution.NONE
    devices["GPU"] = ["gpu0"]
    assert resolve("auto") == Distribution.NONE  # one GPU: the default strategy runs on it
    devices["GPU"] = ["gpu0", "gpu1"]
    assert resolve("auto") == Distribution.MIRRORED
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    assert resolve("auto") == Distribution.TPU
    assert resolve("none") == Distribution.NONE and resolve("mirrored") == Distribution.MIRRORED


def test_here_auto_is_one_device_and_precision_stays_float32():
    placement = place("auto", 16)
    assert placement.describe() == {"strategy": "_DefaultDistributionStrategy",
                                    "distribution": "none", "replicas": 1,
                                    "per_replica_batch": 16}
    with pytest.warns(UserWarning, match="no GPU or TPU is visible: training in float32"):
        assert policy("mixed_float16") == "float32"
    with pytest.raises(ConfigError, match="no TPU is attached"):
        place("tpu", 16)
    with pytest.raises(ConfigError, match="multi_worker needs TF_CONFIG"):
        place("multi_worker", 16)


@pytest.mark.parametrize("sets,env,message", [
    (["finetune.distribution=tpu"], {},
     "error: finetune.distribution: tpu, but no TPU is attached (Colab: Runtime > Change "
     "runtime type > TPU); use auto or none"),
    (["finetune.distribution=mirrored", "finetune.batch_size=3"],
     {distribution.CPU_DEVICES: "2"},
     "error: finetune.batch_size: 3 is not divisible by the 2 replicas of mirrored; use a "
     "multiple of 2"),
    (["finetune.distribution=gpu"], {},
     "finetune.distribution: 'gpu' is not one of auto, none, mirrored, multi_worker, tpu"),
])
def test_bad_settings_are_one_line_errors_and_write_nothing(config, tmp_path, sets, env,
                                                            message):
    code, _, err = finetune_cli(config, tmp_path / "run", *sets, env=env)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and message.removeprefix("error: ") in last
    assert len(err.strip().splitlines()) == 1 or "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_mirrored_over_two_cpu_devices_gives_the_one_device_losses(config, tmp_path):
    code, _, err = finetune_cli(config, tmp_path / "one", "finetune.distribution=none")
    assert code == 0, err[-2000:]
    code, out, err = finetune_cli(config, tmp_path / "two", "finetune.distribution=mirrored",
                                  env={distribution.CPU_DEVICES: "2"})
    assert code == 0, err[-2000:]
    assert "2 replica(s), 2 examples per replica" in out
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())["finetune"]
    assert metrics["distribution"] == {"strategy": "MirroredStrategy", "distribution": "mirrored",
                                       "replicas": 2, "per_replica_batch": 2}
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    np.testing.assert_allclose(two, one, rtol=LOSS_RTOL)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_train_to_the_same_weights(config, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    workers = [finetune_cli(config, tmp_path / f"worker{i}", "finetune.distribution=multi_worker",
                            "finetune.max_steps=4", wait=False,
                            env={"TF_CONFIG": json.dumps({"cluster": cluster,
                                                          "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-2000:]
        assert "multi_worker (MultiWorkerMirroredStrategy), 2 replica(s), 2 examples" in out
    losses = [step_losses(tmp_path / f"worker{i}") for i in range(2)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]  # the all-reduced global loss
    weights = []
    for i in range(2):
        with h5py.File(tmp_path / f"worker{i}" / "finetune" / "preset" / "model.weights.h5") as f:
            arrays = []
            f.visititems(lambda name, obj: arrays.append((name, obj[()]))
                         if isinstance(obj, h5py.Dataset) else None)
            weights.append(dict(arrays))
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 10
    for name, value in weights[0].items():
        np.testing.assert_array_equal(value, weights[1][name], err_msg=name)
    metrics = json.loads((tmp_path / "worker1" / "metrics.json").read_text())["finetune"]
    assert metrics["distribution"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert metrics["after"]["val_perplexity"] < metrics["before"]["val_perplexity"]


def test_multi_worker_needs_a_valid_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is not valid JSON"):
        place("multi_worker", 16)


def test_distillation_under_mirrored_gives_the_one_device_losses(config, tiny_preset, tmp_path):
    def distill_cli(run_dir, *sets, env=None):
        args = [sys.executable, "-m", "pipeline", "distill", str(config), "--teacher",
                str(tiny_preset), "--run-dir", str(run_dir), "--set", "distill.max_steps=4",
                "--set", "distill.batch_size=4"]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, **(env or {})})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((run_dir / "metrics.json").read_text())["distill"]

    one = distill_cli(tmp_path / "one", "finetune.distribution=none")
    two = distill_cli(tmp_path / "two", "finetune.distribution=mirrored",
                      env={distribution.CPU_DEVICES: "2"})
    assert two["distribution"]["replicas"] == 2 and one["distribution"]["replicas"] == 1
    np.testing.assert_allclose(two["loss_first_last"]["student"],
                               one["loss_first_last"]["student"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(list(two["val_perplexity"].values()),
                               list(one["val_perplexity"].values()), rtol=LOSS_RTOL)
