"""The text model's tokenizer graph: keras-hub's eager ids, ops the stock runtime carries."""

import random

import pytest
import tensorflow as tf

from pipeline.bench.gpt2_base import gpt2_tokenizer
from pipeline.export.core_string_ops import CoreTokenizer
from pipeline.export.verify import TOKENIZER_STRINGS
from pipeline.train.presets import load_causal_lm

PIECES = ["a", "bread", "Zq", " ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "1", "23", "4567", ".",
          ",", "!?", "é", "中", "🍮", "\u00a0", "\u3000", "\x0b", "<|endoftext|>", "-", " x",
          "aaaa"]  # no NUL: the text model cuts a prompt there (C strings)
SPEC = tf.TensorSpec([], tf.string)


def edge_and_random_strings(count: int) -> list[str]:
    rng = random.Random(0)
    strings = list(TOKENIZER_STRINGS) + ["  double  spaces  ", "a\n\nb\n", "   ", "\n",
                                         "numbers 12345 1,000", "aaaaaaa", "\n\n\n\n"]
    return strings + ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
                      for _ in range(count)]


def graph_ops(function) -> set:
    g = function.get_concrete_function().graph.as_graph_def()
    return {n.op for n in g.node} | {n.op for f in g.library.function for n in f.node_def}


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_preset):
    return load_causal_lm(str(tiny_preset)).preprocessor.tokenizer


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_ids_and_text_equal_keras_hub_eager(which, tiny_tokenizer):
    tokenizer = tiny_tokenizer if which == "tiny" else gpt2_tokenizer()
    core = CoreTokenizer(tokenizer)
    tokenize = tf.function(core.tokenize, input_signature=[SPEC])
    detokenize = tf.function(core.detokenize, input_signature=[tf.TensorSpec([None], tf.int32)])
    strings = edge_and_random_strings(200)
    wrong = []
    for s in strings:
        eager = [int(i) for i in tokenizer(s)]
        ids = tokenize(tf.constant(s)).numpy().tolist()
        text = detokenize(tf.constant(eager, tf.int32)).numpy()
        if ids != eager or text != s.encode() or text.decode() != tokenizer.detokenize(eager):
            wrong.append((s, ids, eager, text))
    assert wrong == []
    assert len(TOKENIZER_STRINGS) == 13


def test_graph_needs_no_tf_text_and_no_hash_table(tiny_tokenizer):
    plain = graph_ops(tf.function(lambda s: tiny_tokenizer(s), input_signature=[SPEC]))
    assert {"RegexSplitWithOffsets", "LookupTableFindV2"} <= plain  # what keras-hub traces itself
    core = CoreTokenizer(tiny_tokenizer)
    ops = graph_ops(tf.function(lambda s: core.detokenize(core.tokenize(s)),
                                input_signature=[SPEC]))
    assert [o for o in ops if "Table" in o or "Regex" in o and o != "StaticRegexReplace"
            or o == "UnsortedSegmentJoin"] == []
    assert all(hasattr(tf.raw_ops, o) for o in ops if not o.startswith("__"))


def test_a_prompt_ends_at_its_first_nul_byte(tiny_tokenizer):
    core = CoreTokenizer(tiny_tokenizer)
    tokenize = tf.function(core.tokenize, input_signature=[SPEC])
    assert tokenize(tf.constant("soup\x00 and bread")).numpy().tolist() == [
        int(i) for i in tiny_tokenizer("soup")]
    assert tokenize(tf.constant("\x00")).numpy().tolist() == []
