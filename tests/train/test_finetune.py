import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.train.presets import load_causal_lm
from pipeline.train import finetune as finetune_mod

from conftest import ROOT


@pytest.fixture
def kitchen_cfg(tiny_preset, tmp_path, kitchen_lines):
    path = tmp_path / "kitchen.txt"
    path.write_text("\n\n".join(kitchen_lines[:60]), encoding="utf-8")

    def make(**finetune):
        settings = {"sequence_length": 48, "batch_size": 8, "learning_rate": 3e-3, **finetune}
        return load_config(None, {
            "model": {"preset": str(tiny_preset)},
            "data": {"path": str(path), "packing": False},  # one example per row: 7 steps/epoch
            "finetune": settings,
            "eval": {"max_length": 20, "prompts": ["Tomato soup."]},
        })
    return make


def test_few_steps_lower_validation_loss(kitchen_cfg, tmp_path):
    result = finetune_mod.finetune(kitchen_cfg(epochs=2), tmp_path / "run", verbose=False)
    m = result.metrics
    assert m["after"]["val_loss"] < m["before"]["val_loss"] - 0.1
    assert m["steps"] == 2 * 7  # 54 training examples / batch 8, two epochs
    stage = tmp_path / "run" / "finetune"
    assert (stage / "loss_curve.png").stat().st_size > 1000
    assert list((stage / "tensorboard").rglob("events.out.tfevents.*"))
    gens = json.loads((stage / "generations.json").read_text())
    assert gens["after"]["greedy"][0].startswith("Tomato soup.")
    # The saved preset is the trained model, with the run's config beside it.
    again = load_causal_lm(str(result.preset_dir))
    assert again.preprocessor.sequence_length == 48
    assert "sequence_length: 48" in (result.preset_dir / "run_config.yaml").read_text()
    assert not (stage / "checkpoints").exists()  # optimizer state removed once done


def test_keep_checkpoints_keeps_them(kitchen_cfg, tmp_path):
    finetune_mod.finetune(kitchen_cfg(max_steps=3, keep_checkpoints=True), tmp_path / "run",
                          verbose=False)
    latest = tmp_path / "run" / "finetune" / "checkpoints" / "latest.json"
    assert json.loads(latest.read_text())["epoch"] == 1


def test_resume_after_interruption(kitchen_cfg, tmp_path, monkeypatch):
    real_checkpoint = finetune_mod.EpochCheckpoint

    class Interrupting(real_checkpoint):
        def save(self, model, epoch):
            super().save(model, epoch)
            if epoch == 0:
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C as epoch 2 began

    monkeypatch.setattr(finetune_mod, "EpochCheckpoint", Interrupting)
    cfg = kitchen_cfg(epochs=3, keep_checkpoints=True)
    with pytest.raises(KeyboardInterrupt):
        finetune_mod.finetune(cfg, tmp_path / "run", verbose=False)
    ckpt = tmp_path / "run" / "finetune" / "checkpoints"
    assert json.loads((ckpt / "latest.json").read_text())["epoch"] == 1
    assert not list(ckpt.glob(".*tmp*"))  # no half-written checkpoint
    monkeypatch.setattr(finetune_mod, "EpochCheckpoint", real_checkpoint)

    seen = []
    real_restore = finetune_mod.restore_checkpoint

    def spy(causal_lm, directory):
        done, state = real_restore(causal_lm, directory)
        seen.append((done, int(causal_lm.optimizer.iterations.numpy()), len(state["steps"])))
        return done, state

    monkeypatch.setattr(finetune_mod, "restore_checkpoint", spy)
    result = finetune_mod.finetune(cfg, tmp_path / "run", verbose=False)
    assert seen == [(1, 7, 7)]  # one epoch done: optimizer step count and loss history restored
    assert result.metrics["steps"] == 21  # and only the two remaining epochs were trained
    assert result.metrics["after"]["val_loss"] < result.metrics["before"]["val_loss"]


def test_changed_config_discards_old_checkpoints(kitchen_cfg, tmp_path):
    finetune_mod.finetune(kitchen_cfg(max_steps=3), tmp_path / "run", verbose=False)
    result = finetune_mod.finetune(kitchen_cfg(max_steps=4), tmp_path / "run", verbose=False)
    assert result.metrics["steps"] == 4


def test_lora_trains_adapters_and_saves_merged_weights(kitchen_cfg, tmp_path):
    result = finetune_mod.finetune(kitchen_cfg(lora_rank=2, max_steps=6), tmp_path / "run",
                                   verbose=False)
    assert result.metrics["after"]["val_loss"] < result.metrics["before"]["val_loss"]
    base = load_causal_lm(str(kitchen_cfg().model.preset))
    tuned = load_causal_lm(str(result.preset_dir))
    # The saved preset is a plain model (no adapters) whose weights moved.
    assert not any(getattr(l, "lora_enabled", False) for l in tuned.backbone._flatten_layers())
    assert len(tuned.backbone.trainable_weights) == len(base.backbone.trainable_weights)
    x = base.preprocessor(["Tomato soup."])[0]
    assert not np.allclose(base(x), tuned(x), atol=1e-4)


def test_sequence_length_above_model_limit(kitchen_cfg, tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="finetune.sequence_length: 500 is above"):
        finetune_mod.finetune(kitchen_cfg(sequence_length=500), tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()


def finetune_cli(config, run_dir, devices=1):
    env = {**os.environ, "GPT2_PIPELINE_CPU_DEVICES": str(devices)}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "finetune", str(config),
                             "--run-dir", str(run_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow  # three fine-tunes in child processes (each strategy)
@pytest.mark.parametrize("distribution,devices", [("none", 1), ("mirrored", 2)])
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_preset, tmp_path, kitchen_lines,
                                                        distribution, devices):
    data = tmp_path / "kitchen.txt"
    data.write_text("\n\n".join(kitchen_lines[:60]), encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  preset: {tiny_preset}\ndata:\n  path: {data}\n  packing: false\n"
                      "finetune:\n  sequence_length: 48\n  batch_size: 8\n  epochs: 10\n"
                      f"  learning_rate: 3.0e-3\n  distribution: {distribution}\n"
                      "eval:\n  max_length: 20\n  prompts: [Tomato soup.]\n")
    whole = finetune_cli(config, tmp_path / "whole", devices)
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-2000:]

    killed = finetune_cli(config, tmp_path / "killed", devices)
    latest = tmp_path / "killed" / "finetune" / "checkpoints" / "latest.json"
    deadline = time.time() + 600
    while time.time() < deadline and killed.poll() is None:
        if latest.is_file() and json.loads(latest.read_text())["epoch"] >= 3:
            break
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    done = json.loads(latest.read_text())["epoch"]
    assert 3 <= done < 10, done  # killed after a checkpoint, before the end
    assert not (tmp_path / "killed" / "finetune" / "preset").exists()

    # the dead run's lock does not block the resumed one
    resumed = finetune_cli(config, tmp_path / "killed", devices)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text())["finetune"]
               for name in ("whole", "killed")]
    losses = [m["after"]["val_loss"] for m in metrics]
    assert f"{losses[0]:.4g}" == f"{losses[1]:.4g}", losses  # 4 significant digits
    assert metrics[0]["steps"] == metrics[1]["steps"] == 70
    assert metrics[1]["distribution"]["replicas"] == devices


def test_micro_batches_take_the_steps_the_whole_batch_takes(kitchen_cfg, tmp_path):
    # 54 examples, batch 8: 7 optimizer steps; with micro-batches of 2 each is 4 passes (the
    # last batch of 6 rows is 4 passes of 2 rows, two of them repeated). Same data, same
    # learning-rate schedule, gradients averaged: the weights end where the whole batch ends.
    whole = finetune_mod.finetune(kitchen_cfg(epochs=1, batch_size=8), tmp_path / "whole",
                                  verbose=False)
    micro = finetune_mod.finetune(kitchen_cfg(epochs=1, batch_size=8, micro_batch_size=4),
                                  tmp_path / "micro", verbose=False)
    assert whole.metrics["steps"] == micro.metrics["steps"] == 7
    a = load_causal_lm(str(whole.preset_dir)).backbone.get_weights()
    b = load_causal_lm(str(micro.preset_dir)).backbone.get_weights()
    start = load_causal_lm(kitchen_cfg().model.preset).backbone.get_weights()
    moved = max(float(np.abs(x - s).max()) for x, s in zip(a, start))
    apart = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    assert moved > 1e-3 and apart < 1e-5  # float32 sums in another order
    assert micro.metrics["after"]["val_loss"] == pytest.approx(whole.metrics["after"]["val_loss"],
                                                               rel=1e-4)
