import math

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.train.distill import distillation_loss, train_student, verdict
from pipeline.train.student import build_student, student_layer_sources

LN3 = math.log(3.0)


def loss(teacher, student, labels, weights, t, alpha):
    return float(distillation_loss(np.array(teacher, "float32"), np.array(student, "float32"),
                                   np.array(labels), np.array(weights, "float32"), t, alpha))


def test_kl_term_by_hand():
    # teacher p = [1/2, 1/2], student q = [1/4, 3/4]: KL(p||q) = 1/2 ln(4/3)
    assert loss([[[0, 0]]], [[[0, LN3]]], [[1]], [[1]], 1.0, 1.0) == pytest.approx(
        0.5 * math.log(4 / 3), abs=1e-6)
    # cross-entropy alone: -ln(3/4)
    assert loss([[[0, 0]]], [[[0, LN3]]], [[1]], [[1]], 1.0, 0.0) == pytest.approx(
        -math.log(0.75), abs=1e-6)
    # alpha mixes the two
    assert loss([[[0, 0]]], [[[0, LN3]]], [[1]], [[1]], 1.0, 0.25) == pytest.approx(
        0.25 * 0.5 * math.log(4 / 3) - 0.75 * math.log(0.75), abs=1e-6)


def test_temperature_softens_and_scales_by_t_squared():
    # T = 2: q = softmax([0, ln3 / 2]) = [1, sqrt 3] / (1 + sqrt 3); loss = 4 * KL(p || q)
    q = np.array([1.0, math.sqrt(3.0)]) / (1.0 + math.sqrt(3.0))
    expected = 4.0 * sum(0.5 * math.log(0.5 / qi) for qi in q)
    assert loss([[[0, 0]]], [[[0, LN3]]], [[1]], [[1]], 2.0, 1.0) == pytest.approx(expected,
                                                                                    abs=1e-6)


def test_padding_is_masked():
    one = loss([[[0, 0]]], [[[0, LN3]]], [[1]], [[1]], 2.0, 0.5)
    # A second, padded token with wildly different logits changes nothing.
    two = loss([[[0, 0], [50, -50]]], [[[0, LN3], [-50, 50]]], [[1, 0]], [[1, 0]], 2.0, 0.5)
    assert two == pytest.approx(one, abs=1e-6)


def test_verdict_names_the_outcome_and_the_likely_cause():
    assert verdict({"teacher": 14.0, "student": 15.5, "baseline": 16.0}).startswith(
        "Distillation helped: the student's perplexity is 3.1% below")
    undertrained = verdict({"teacher": 46.5, "student": 43.4, "baseline": 39.8})
    assert "did not help" in undertrained and "under-trained" in undertrained
    assert "alpha" in verdict({"teacher": 14.0, "student": 16.5, "baseline": 16.0})


def test_layer_sources():
    assert student_layer_sources(4, 2) == [0, 2]
    assert student_layer_sources(12, 6) == [0, 2, 4, 6, 8, 10]
    assert student_layer_sources(2, 2) == [0, 1]


def test_student_copies_every_other_teacher_layer(tiny_preset):
    from pipeline.train.presets import load_causal_lm

    teacher = load_causal_lm(str(tiny_preset)).backbone
    cfg = load_config(None, {"distill": {"student_layers": 1}}).distill
    student, init = build_student(teacher, cfg)
    assert student.num_layers == 1 and init["teacher_layers"] == [0]
    for a, b in zip(student.get_layer("transformer_layer_0").get_weights(),
                    teacher.get_layer("transformer_layer_0").get_weights()):
        np.testing.assert_array_equal(a, b)
    for name in ("token_embedding", "position_embedding", "layer_norm"):
        for a, b in zip(student.get_layer(name).get_weights(), teacher.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    default, init = build_student(teacher, load_config().distill)
    assert default.num_layers == 1  # half of the tiny teacher's 2 layers
    narrow, init = build_student(teacher, load_config(None, {"distill": {
        "student_hidden_dim": 16}}).distill)
    assert narrow.hidden_dim == 16 and init["init"].startswith("random")


@pytest.mark.parametrize("overrides, message", [
    ({"student_layers": 3}, "distill.student_layers: 3 is more than the teacher's 2 layers"),
    ({"student_hidden_dim": 64}, "distill.student_hidden_dim: 64 is wider"),
])
def test_student_bigger_than_teacher_is_rejected(tiny_preset, overrides, message):
    from pipeline.train.presets import load_causal_lm

    teacher = load_causal_lm(str(tiny_preset)).backbone
    with pytest.raises(ConfigError, match=message):
        build_student(teacher, load_config(None, {"distill": overrides}).distill)


@pytest.mark.parametrize("overrides, message", [
    ({"temperature": 0}, "distill.temperature: 0.0 must be > 0"),
    ({"temperature": -1.5}, "distill.temperature: -1.5 must be > 0"),
    ({"alpha": 1.5}, r"distill.alpha: 1.5 must be in \[0, 1\]"),
    ({"alpha": -0.1}, r"distill.alpha: -0.1 must be in \[0, 1\]"),
    ({"micro_batch_size": 5}, "distill.micro_batch_size: 5 must divide distill.batch_size 16"),
    ({"micro_batch_size": -2}, "distill.micro_batch_size: -2 must divide"),
])
def test_bad_distill_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"distill": overrides})


def test_few_steps_lower_the_distillation_loss(tiny_preset, kitchen_lines):
    import keras_hub

    from pipeline.train.data import tokenize
    from pipeline.train.presets import load_causal_lm

    teacher = load_causal_lm(str(tiny_preset))
    teacher.preprocessor.sequence_length = 48
    train = tokenize(kitchen_lines[:48], teacher.preprocessor)
    cfg = load_config(None, {"distill": {"max_steps": 12, "batch_size": 8,
                                         "learning_rate": 3e-3}}).distill
    student, _ = build_student(teacher.backbone, cfg)
    student_lm = keras_hub.models.GPT2CausalLM(student, teacher.preprocessor)
    losses = train_student(student_lm, teacher, train, cfg, cfg.alpha, "test", verbose=False)
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05


def test_micro_batches_give_the_losses_of_the_whole_batch(tiny_preset, kitchen_lines):
    import keras_hub

    from pipeline.train.data import tokenize
    from pipeline.train.presets import load_causal_lm

    teacher = load_causal_lm(str(tiny_preset))
    teacher.preprocessor.sequence_length = 48
    train = tokenize(kitchen_lines[:48], teacher.preprocessor, packing=True)
    train.w[:] = 1.0  # every row the same token count: the mean of micro-batch means is exact
    losses, weights = {}, {}
    for micro in (0, 2):
        cfg = load_config(None, {"distill": {"max_steps": 6, "batch_size": 8,
                                             "micro_batch_size": micro,
                                             "learning_rate": 3e-3}}).distill
        student, _ = build_student(teacher.backbone, cfg)
        student_lm = keras_hub.models.GPT2CausalLM(student, teacher.preprocessor)
        losses[micro] = train_student(student_lm, teacher, train, cfg, cfg.alpha, "test",
                                      verbose=False)
        weights[micro] = student.get_weights()
    assert len(losses[2]) == len(losses[0]) == 6
    np.testing.assert_allclose(losses[2], losses[0], rtol=1e-4)
    assert losses[0][-1] < losses[0][0]  # it trained
    for a, b in zip(weights[2], weights[0]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_keras_distiller_ignores_padding_so_distill_keeps_its_own_loss():
    """Why distillation does not use `keras.distillation.Distiller` (Keras 3.15), measured:
    its loss ignores `sample_weight`, so padded positions count, where `distillation_loss`
    masks them. (And it trains through `fit`, which fails under multi_worker.)"""
    import keras

    rng = np.random.default_rng(0)
    teacher_logits = rng.normal(size=(2, 6, 5)).astype("float32")
    student_logits = rng.normal(size=(2, 6, 5)).astype("float32")
    labels = rng.integers(0, 5, size=(2, 6))
    padded = np.ones((2, 6), "float32")
    padded[1, 3:] = 0.0  # the second row's last three positions are padding

    class Fixed(keras.Model):  # a model whose output is given logits
        def __init__(self, logits):
            super().__init__()
            self.logits = logits
            self.bias = self.add_weight(shape=(), initializer="zeros")

        def call(self, x, training=None):
            return self.logits + self.bias

    distiller = keras.distillation.Distiller(
        teacher=Fixed(teacher_logits), student=Fixed(student_logits),
        distillation_losses=keras.distillation.LogitsDistillation(temperature=2.0),
        student_loss_weight=0.5)
    distiller.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = np.zeros((2, 6), "float32")

    def keras_loss(weights):
        return float(distiller.compute_loss(x, labels, distiller(x), sample_weight=weights))

    assert keras_loss(padded) == pytest.approx(keras_loss(np.ones_like(padded)), rel=1e-6)
    ours = loss(teacher_logits, student_logits, labels, padded, 2.0, 0.5)
    assert ours != pytest.approx(loss(teacher_logits, student_logits, labels,
                                      np.ones_like(padded), 2.0, 0.5), rel=1e-3)


def test_the_baseline_trains_the_same_in_a_child_process(tiny_preset, tmp_path):
    """The baseline's child (its memory goes back when it exits) gives the in-process losses
    and perplexity: same seed, same windows, same initial weights (float32 sums: 1e-5)."""
    import keras
    import keras_hub

    from pipeline.train.distill import (_baseline_in_child, baseline_in_child, train_baseline,
                                        training_windows)
    from pipeline.train.distribution import place
    from pipeline.train.presets import load_causal_lm

    cfg = load_config("configs/tiny.yaml", {"distill": {"max_steps": 3, "batch_size": 4}})
    teacher = load_causal_lm(str(tiny_preset))
    keras.utils.set_random_seed(cfg.distill.seed)
    student, _ = build_student(teacher.backbone, cfg.distill)
    initial = tmp_path / "student.weights.h5"
    student.save_weights(str(initial))
    placement = place(cfg.finetune.distribution, cfg.distill.batch_size, "distill")
    assert baseline_in_child(placement)  # one CPU, no GPU: how make run trains it
    length = min(cfg.finetune.sequence_length, student.max_sequence_length)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(teacher.preprocessor.tokenizer,
                                                             sequence_length=length)
    train, val = training_windows(cfg, preprocessor.tokenizer, length, verbose=False)
    here = train_baseline(cfg, student.get_config(), preprocessor, train, val, placement,
                          initial, verbose=False)
    child = _baseline_in_child(cfg, str(tiny_preset), student.get_config(), initial,
                               verbose=False)
    assert len(child[0]) == len(here[0]) == 3
    np.testing.assert_allclose(child[0], here[0], rtol=1e-5)
    assert child[1] == pytest.approx(here[1], rel=1e-5)
