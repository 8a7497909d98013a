"""GPT-2's byte-level BPE as a graph of ops the stock select-TF-ops runtime runs.

Why: traced into a graph, keras-hub's byte-pair tokenizer needs the TF-Text op
`RegexSplitWithOffsets`, TF hash tables (`HashTableV2`, `LookupTableFindV2`,
`MutableHashTableV2`, ...) and `UnsortedSegmentJoin`, none of which the stock Android library
`org.tensorflow:tensorflow-lite-select-tf-ops` carries (its allowlist is
`tensorflow/lite/delegates/flex/allowlisted_flex_ops.cc`). And the graph path is not what
Keras itself runs: eagerly (`generate()`, training, the `.litertlm` bundle's tokenizer.json),
keras-hub 0.32 tokenizes with the `tokenizers` library, whose word-splitting pattern it passes
as a plain string (`pre_tokenizers.Split(pattern=str)` is a literal, not a regex), so nothing
is split: byte-level BPE runs over the whole text, with only the special tokens
(`<|endoftext|>`) cut out.

So `CoreTokenizer` does what the eager path does, on integer ids instead of strings:
1. the prompt ends at its first NUL byte (the C-string convention); each special token
   becomes the two bytes 0xFF, k (0xFF never occurs in UTF-8 text);
2. the prompt's bytes become the ids of GPT-2's byte symbols (a 256-entry table);
3. BPE: the adjacent pair with the lowest merge rank is merged everywhere (leftmost first
   where a run of equal ids overlaps), until no pair has a rank. Pairs are found by binary
   search over the merge table sorted by (left id, right id); no pair crosses a special token;
4. detokenizing gathers each id's bytes and joins them.
Ops used: regex_replace, decode_raw, gather, compare, select, cumsum, segment min, while loop,
reduce_join; all TFLite builtins or in the allowlist. Its ids equal keras-hub's eager ids
(tests/export/test_core_string_ops.py).

Example:
    >>> core = CoreTokenizer(keras_tokenizer)
    >>> ids = core.tokenize(tf.constant("Tomato soup."))     # int32 [n], keras-hub's ids
    >>> core.detokenize(ids)                                  # b"Tomato soup."
"""

from __future__ import annotations

import math
import re

import numpy as np
import tensorflow as tf
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

NO_RANK = np.iinfo(np.int32).max
MARK = 0xFF  # starts a special token's two-byte marker; never a byte of UTF-8 text


def merge_table(vocabulary: dict, merges: list[str]) -> np.ndarray:
    """Returns (M, 4) int32 rows (left id, right id, rank, merged id), sorted by (left, right).

    The first rule wins where a pair repeats; a rule whose parts or result are not in the
    vocabulary can never apply and is left out."""
    rows, seen = [], set()
    for rank, rule in enumerate(m for m in merges if not m.lstrip().startswith("#version")):
        a, b = rule.split(" ")
        if a in vocabulary and b in vocabulary and a + b in vocabulary:
            pair = (vocabulary[a], vocabulary[b])
            if pair not in seen:
                seen.add(pair)
                rows.append((*pair, rank, vocabulary[a + b]))
    table = np.asarray(sorted(rows), dtype=np.int32).reshape(-1, 4)
    return table


def token_bytes(vocabulary: dict, specials: list[str]) -> np.ndarray:
    """Returns each id's raw bytes (object array indexed by id): byte symbols mapped back,
    special tokens as their own text."""
    byte_list, unicode_list = bytes_to_unicode()
    to_byte = dict(zip(unicode_list, byte_list))
    out = np.full(max(vocabulary.values()) + 1, b"", dtype=object)
    for token, i in vocabulary.items():
        whole = token in specials or any(c not in to_byte for c in token)
        out[i] = token.encode() if whole else b"".join(to_byte[c] for c in token)
    return out


def byte_ids(vocabulary: dict) -> np.ndarray:
    """Returns the id of each byte's symbol (256 int32; -1 where the vocabulary lacks it: the
    eager tokenizer then drops that byte, and so does this one)."""
    byte_list, unicode_list = bytes_to_unicode()
    ids = np.full(256, -1, dtype=np.int32)
    for b, c in zip(byte_list, unicode_list):
        ids[b[0]] = vocabulary.get(c, -1)
    return ids


class CoreTokenizer(tf.Module):
    """keras-hub's eager GPT-2 tokenization and detokenization as graph-mode functions."""

    def __init__(self, tokenizer):
        super().__init__(name="core_tokenizer")
        vocabulary = dict(tokenizer.vocabulary)
        self.specials = sorted(tokenizer.unsplittable_tokens or [], key=len, reverse=True)
        if len(self.specials) >= MARK:
            raise ValueError(f"{len(self.specials)} special tokens; at most {MARK - 1} fit")
        self.special_ids = np.asarray([vocabulary[s] for s in self.specials] or [0], np.int32)
        self.byte_ids = byte_ids(vocabulary)
        self.merges = merge_table(vocabulary, list(tokenizer.merges))
        self.token_bytes = token_bytes(vocabulary, self.specials)

    def tokenize(self, prompt):
        """Returns the int32 ids [n] of a scalar string prompt."""
        # A prompt ends at its first NUL byte, as a C string does. (TFLite's Python wrapper
        # can only pass the empty prompt as "\x00": numpy has no zero-length bytes scalar.)
        text = tf.strings.regex_replace(prompt, r"(?s)\x00.*", "")
        for k, special in enumerate(self.specials):  # longest first, as alternatives match
            text = tf.strings.regex_replace(text, re.escape(special), bytes([MARK, k + 1]))
        b = tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32)
        marker = tf.equal(b, MARK)
        after_marker = tf.concat([[False], marker[:-1]], 0)
        following = tf.concat([b[1:], [1]], 0) - 1
        special_id = tf.gather(self.special_ids, tf.clip_by_value(
            following, 0, len(self.special_ids) - 1))
        ids = tf.where(marker, special_id, tf.gather(self.byte_ids, b))
        keep = tf.logical_and(tf.logical_not(after_marker), ids >= 0)
        ids, special = tf.boolean_mask(ids, keep), tf.boolean_mask(marker, keep)
        if len(self.merges) == 0:
            return ids

        def not_done(ids, special, done):
            return tf.logical_not(done)

        ids, _, _ = tf.while_loop(
            not_done, self._merge_step, (ids, special, tf.size(ids) < 2),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]),
                              tf.TensorShape([])))
        return ids

    def detokenize(self, ids):
        """Returns the bytes of int32 ids [n] joined into one scalar string."""
        return tf.strings.reduce_join(tf.gather(self.token_bytes, ids))

    def _merge_step(self, ids, special, done):
        """Merges every non-overlapping occurrence of the lowest-ranked pair."""
        rank, merged = self._lookup(ids[:-1], ids[1:])
        rank = tf.where(tf.logical_or(special[:-1], special[1:]), NO_RANK, rank)
        best = tf.reduce_min(tf.concat([rank, [NO_RANK]], 0))
        done = tf.equal(best, NO_RANK)
        chosen = tf.logical_and(tf.equal(rank, best), tf.logical_not(done))
        # A pair (x, x) can repeat overlapping ("a a a"): keep every other one of each run,
        # from its left end, as BPE merges leftmost first.
        m = tf.size(chosen)
        position = tf.range(m)
        run = tf.cumsum(tf.cast(tf.logical_not(chosen), tf.int32), exclusive=True)
        start = tf.gather(tf.math.unsorted_segment_min(position, run, m + 1), run)
        chosen = tf.logical_and(chosen, tf.equal(tf.math.floormod(position - start, 2), 0))
        ids = tf.where(tf.concat([chosen, [False]], 0), tf.concat([merged, [0]], 0), ids)
        keep = tf.logical_not(tf.concat([[False], chosen], 0))
        return tf.boolean_mask(ids, keep), tf.boolean_mask(special, keep), done

    def _lookup(self, left, right):
        """Returns (rank, merged id) of each pair; rank NO_RANK where no rule merges it."""
        size = len(self.merges)
        table = [tf.constant(self.merges[:, j]) for j in range(4)]  # one constant per column
        lo = tf.zeros_like(left)
        hi = tf.fill(tf.shape(left), size)
        for _ in range(math.ceil(math.log2(size + 1))):  # lower bound of (left, right)
            active = lo < hi
            mid = tf.minimum((lo + hi) // 2, size - 1)
            row_left, row_right = tf.gather(table[0], mid), tf.gather(table[1], mid)
            below = tf.logical_or(row_left < left,
                                  tf.logical_and(tf.equal(row_left, left), row_right < right))
            lo = tf.where(tf.logical_and(active, below), mid + 1, lo)
            hi = tf.where(tf.logical_and(active, tf.logical_not(below)), mid, hi)
        row = tf.minimum(lo, size - 1)
        hit = tf.logical_and(tf.equal(tf.gather(table[0], row), left),
                             tf.equal(tf.gather(table[1], row), right))
        return (tf.where(hit, tf.gather(table[2], row), NO_RANK),
                tf.gather(table[3], row))
