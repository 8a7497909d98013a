"""The text model's tokenizer graph: keras-hub's eager ids, core TensorFlow ops only."""

import random

import pytest
import tensorflow as tf

from pipeline.export.core_string_ops import core_string_ops, split_words
from pipeline.export.tflite import non_core_ops
from pipeline.export.verify import TOKENIZER_STRINGS
from pipeline.train.presets import load_causal_lm

PIECES = ["a", "bread", "Zq", " ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "1", "23", "4567", ".",
          ",", "!?", "é", "中", "🍮", "\u00a0", "\u3000", "\x0b", "<|endoftext|>", "-", " x"]


def graph_ops(function) -> set:
    g = function.get_concrete_function().graph.as_graph_def()
    return {n.op for n in g.node} | {n.op for f in g.library.function for n in f.node_def}


@pytest.fixture(scope="module")
def tokenizer(tiny_preset):
    return load_causal_lm(str(tiny_preset)).preprocessor.tokenizer


def test_graph_ids_equal_keras_hub_eager_ids(tokenizer):
    rng = random.Random(0)
    strings = list(TOKENIZER_STRINGS) + ["  double  spaces  ", "a\n\nb\n", "   ", "\n",
                                         "numbers 12345 1,000"]
    strings += ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 10)))
                for _ in range(300)]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(texts):
        with core_string_ops():
            return tokenizer(texts)

    graph = tokenize(tf.constant(strings)).to_list()
    eager = [[int(i) for i in tokenizer(s)] for s in strings]
    assert [s for s, g, e in zip(strings, graph, eager) if g != e] == []
    assert len(TOKENIZER_STRINGS) == 13


def test_graph_has_no_tf_text_op(tokenizer):
    spec = [tf.TensorSpec([], tf.string)]
    plain = tf.function(lambda s: tokenizer(s), input_signature=spec)
    assert "RegexSplitWithOffsets" in graph_ops(plain)  # what keras-hub traces on its own

    def core(s):
        with core_string_ops():
            return tokenizer(s)
    ops = graph_ops(tf.function(core, input_signature=spec))
    assert "RegexSplitWithOffsets" not in ops
    assert non_core_ops(o for o in ops if not o.startswith("__")) == []


def test_special_tokens_stay_whole():
    words = split_words(tf.constant(["a<|endoftext|>b <|endoftext|><|endoftext|>", ""]),
                        ["<|endoftext|>"]).to_list()
    assert words == [[b"a", b"<|endoftext|>", b"b ", b"<|endoftext|>", b"<|endoftext|>"], []]
