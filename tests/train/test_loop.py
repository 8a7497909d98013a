"""The one training loop: every model trains through `loop.TrainingStep`, under any strategy."""

import ast
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.train.loop import TrainingStep, attach_optimizer, make_optimizer, token_loss
from pipeline.train.presets import load_causal_lm

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"
TRAINING_CALLS = {"fit", "train_on_batch", "apply_gradients", "run"}  # run: strategy.run


def test_one_training_step_mechanism_in_the_tree():
    """No `fit`, `train_on_batch`, `apply_gradients` or `strategy.run` outside loop.py: the
    embedded base, fine-tuning (every strategy) and distillation all step through it."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in TRAINING_CALLS
                    and not (node.func.attr == "run" and "strategy" not in ast.unparse(node.func))):
                found.append(f"{path.relative_to(PACKAGE)}: {ast.unparse(node.func)}")
    assert sorted(found) == ["train/loop.py: optimizer.apply_gradients",
                             "train/loop.py: strategy.run"], found


def test_micro_batches_give_the_whole_batch_step(tiny_preset):
    """Two passes of 2 rows and one pass of 4 rows: the same optimizer step (to float32
    round-off), and the optimizer counts one step for each."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, size=(4, 17)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((4, 16), "int32")}
    y, w = ids[:, 1:], np.ones((4, 16), "float32")
    weights = []
    for passes in (1, 2):
        lm = load_causal_lm(str(tiny_preset))
        attach_optimizer(lm, make_optimizer(1e-3, 10, 0.0, 0.0, passes))
        rows = len(ids) // passes
        data = tf.data.Dataset.from_tensor_slices(
            ({k: v.reshape(passes, rows, 16) for k, v in x.items()},
             y.reshape(passes, rows, 16), w.reshape(passes, rows, 16)))
        step = TrainingStep(token_loss(lm), lm.trainable_variables, lm.optimizer, data,
                            passes=passes, jit_compile=False)
        loss = step()
        assert np.isfinite(loss) and int(lm.optimizer.iterations.numpy()) == 1
        weights.append(lm.backbone.get_layer("token_embedding").get_weights()[0])
    np.testing.assert_allclose(weights[0], weights[1], atol=1e-5)


def test_perplexity_in_logit_sized_chunks_is_the_whole_batchs(tiny_preset, kitchen_lines,
                                                              monkeypatch):
    """Fewer rows per forward where the logits would be large: the same perplexity (float32
    sums in another order: 1e-6)."""
    from pipeline.train import loop
    from pipeline.train.data import tokenize

    causal_lm = load_causal_lm(str(tiny_preset))
    causal_lm.preprocessor.sequence_length = 32
    val = tokenize(kitchen_lines[:20], causal_lm.preprocessor)
    whole = loop.perplexity(causal_lm, val.x, val.y, val.w, batch_size=32)
    calls, sums = [], loop.token_loss_sums
    monkeypatch.setattr(loop, "LOGITS_BYTES", 3 * 4 * 32 * causal_lm.backbone.vocabulary_size)
    monkeypatch.setattr(loop, "token_loss_sums",
                        lambda f, x, y, w, rows: calls.append(rows) or sums(f, x, y, w, rows))
    chunked = loop.perplexity(causal_lm, val.x, val.y, val.w, batch_size=32)
    assert calls == [3]
    assert chunked["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-6)
