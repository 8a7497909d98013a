"""keras-hub's GPT-2 tokenization in a graph with core TensorFlow ops only, for the text model.

Why: traced into a graph, keras-hub's byte-pair tokenizer splits text into words with the
TF-Text op `RegexSplitWithOffsets`, which the stock select-TF-ops runtime
(`org.tensorflow:tensorflow-lite-select-tf-ops`) does not carry. And the graph path is not
what Keras itself runs: eagerly (`generate()`, training, the `.litertlm` bundle's
tokenizer.json), keras-hub 0.32 tokenizes with the `tokenizers` library, whose word-splitting
pattern it passes as a plain string (`pre_tokenizers.Split(pattern=str)` is a literal, not a
regex), so nothing is split: byte-level BPE runs over the whole text, with only the special
tokens (`<|endoftext|>`) cut out. The two paths give different ids on repeated spaces, long
numbers and more.

So the text model's graph does what the eager path does: cut out special tokens (core
`regex_replace` and `strings.split`), then keras-hub's own BPE merges (hash tables and a while
loop: core ops). Its ids equal keras-hub's eager ids (tests/export/test_core_string_ops.py).

Example (only while a graph is traced):
    >>> with core_string_ops():
    ...     ids = tokenizer(prompt)   # inside a tf.function: no TF-Text op in the graph
"""

from __future__ import annotations

import contextlib
import re

import tensorflow as tf
from keras_hub.src.tokenizers import byte_pair_tokenizer

# Marks cuts. NUL never occurs in typed text; a prompt containing it is also cut there.
SEPARATOR = "\x00"


def split_words(inputs, unsplittable_tokens=None):
    """Returns the BPE words of each string in `inputs` ([B] strings), ragged [B, words]:
    the special tokens, each whole, and the text between them."""
    specials = "|".join(map(re.escape, unsplittable_tokens or []))
    if specials:
        inputs = tf.strings.regex_replace(inputs, f"({specials})",
                                          SEPARATOR + r"\1" + SEPARATOR)
    words = tf.strings.split(inputs, sep=SEPARATOR)
    return tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)


@contextlib.contextmanager
def core_string_ops():
    """While active, keras-hub's byte-pair tokenizer traces `split_words` (core ops only)."""
    original = byte_pair_tokenizer.split_strings_for_bpe
    byte_pair_tokenizer.split_strings_for_bpe = split_words
    try:
        yield
    finally:
        byte_pair_tokenizer.split_strings_for_bpe = original
