"""The token cache: keras-hub's ids, tokenized once, invalidated per file, read from disk."""

import json

import numpy as np
import pytest

from pipeline.bench.gpt2_base import gpt2_tokenizer
from pipeline.config import DataConfig
from pipeline.errors import DataError
from pipeline.train.data import file_examples, load_split, tokenize
from pipeline.train.loop import training_batches
from pipeline.train.presets import load_causal_lm
from pipeline.train.token_cache import open_corpus
from tests.export.test_core_string_ops import edge_and_random_strings


@pytest.fixture(scope="module")
def preprocessor(tiny_preset):
    return load_causal_lm(str(tiny_preset)).preprocessor


class CountingTokenizer:
    """The tokenizer, counting how many texts it was asked to tokenize."""

    def __init__(self, tokenizer):
        self.inner, self.texts = tokenizer, 0

    def __call__(self, texts):
        self.texts += len(texts)
        return self.inner(texts)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_ids_equal_keras_hub(which, preprocessor, tmp_path):
    tokenizer = preprocessor.tokenizer if which == "tiny" else gpt2_tokenizer()
    records = [s for s in edge_and_random_strings(150) if s.strip()]
    data = tmp_path / "edge.jsonl"
    data.write_text("".join(json.dumps({"text": s}) + "\n" for s in records), encoding="utf-8")
    cfg = DataConfig(path=str(data))
    corpus = open_corpus(cfg, tokenizer, verbose=False, root=tmp_path / "cache")
    shard = next((tmp_path / "cache").glob("file-*"))
    ids = np.fromfile(shard / "ids.bin", dtype=corpus.dtype)
    starts = np.load(shard / "starts.npy")
    examples = file_examples(data, cfg)
    assert corpus.dtype == "uint16" and len(starts) == len(examples) + 1
    for k, text in enumerate(examples):
        expected = [int(t) for t in tokenizer(text)] + [tokenizer.end_token_id]
        assert ids[starts[k]:starts[k + 1]].tolist() == expected, repr(text)


@pytest.mark.parametrize("packing", [True, False])
def test_windows_from_disk_equal_tokenizing_in_ram(packing, preprocessor, tmp_path):
    cfg = DataConfig(packing=packing)  # the bundled kitchen notes
    corpus = open_corpus(cfg, preprocessor.tokenizer, verbose=False, root=tmp_path)
    preprocessor.sequence_length = 48
    for split, texts in zip(("train", "validation"), load_split(cfg)):
        ram = tokenize(texts, preprocessor, packing)
        disk = corpus.windows(split, 48, packing)
        x, y, w = disk.rows(np.arange(len(disk)))
        assert len(disk) == len(ram)
        assert (x["token_ids"] == ram.x["token_ids"]).all()
        assert (x["padding_mask"] == ram.x["padding_mask"]).all()
        assert (y == ram.y).all() and (w == ram.w).all()
        assert disk.stats == ram.stats


def test_packed_epoch_reads_every_token_once(preprocessor, tmp_path, kitchen_lines):
    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(kitchen_lines[:30]), encoding="utf-8")
    cfg = DataConfig(path=str(data), validation_fraction=0.1)
    corpus = open_corpus(cfg, preprocessor.tokenizer, verbose=False, root=tmp_path / "c")
    train = corpus.windows("train", 32, packing=True)
    end = preprocessor.tokenizer.end_token_id
    texts, _ = load_split(cfg)
    stream = [end] + [t for doc in texts for t in [*map(int, preprocessor.tokenizer(doc)), end]]
    x, y, w = train.rows(np.arange(len(train)))
    assert y[w > 0].tolist() == stream[1:]  # every token a target once, in order
    assert y[w > 0].tolist().count(end) == len(texts)  # each boundary an <|endoftext|>
    # One epoch of batches (shuffled, read from disk) holds each window exactly once.
    epoch = [row for _, yb, _ in training_batches(train, 5, 3, 0, 1) for row in yb.numpy().tolist()]
    assert sorted(epoch) == sorted(y.tolist())


def test_reused_and_invalidated_per_file(preprocessor, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("Soup of the day.\nBread and butter.\nTea.\n")
    (folder / "b.txt").write_text("Lemon tart.\nFig jam.\n")
    cfg, root = DataConfig(path=str(folder)), tmp_path / "cache"
    counting = CountingTokenizer(preprocessor.tokenizer)
    open_corpus(cfg, counting, verbose=False, root=root)
    assert counting.texts == 5
    shards = {p.name: p.stat().st_mtime_ns for p in root.glob("file-*")}
    open_corpus(cfg, counting, verbose=False, root=root)
    assert counting.texts == 5  # nothing tokenized again
    (folder / "b.txt").write_text("Lemon tart.\nFig jam.\nPlum cake.\n")
    corpus = open_corpus(cfg, counting, verbose=False, root=root)
    assert counting.texts == 5 + 3  # only the changed file
    now = {p.name: p.stat().st_mtime_ns for p in root.glob("file-*")}
    assert len(now) == 2 and len(set(now) & set(shards)) == 1  # b's old shard is gone
    assert [f["examples"] for f in corpus.files] == [3, 3]
    train, val = (corpus.windows(s, 16, False) for s in ("train", "validation"))
    assert len(train) + len(val) == 6
    with pytest.raises(DataError, match="no examples"):
        open_corpus(DataConfig(path=str(folder), min_chars=500), counting, verbose=False,
                    root=root)


def test_validation_sample_is_bounded_and_recorded(preprocessor, tmp_path):
    corpus = open_corpus(DataConfig(), preprocessor.tokenizer, verbose=False, root=tmp_path)
    val = corpus.windows("validation", 32, packing=True)
    sample = val.sample(5 * 32)
    assert len(sample) == 5 < len(val)
    assert sample.stats["rows_evaluated"] == 5 and sample.stats["max_tokens"] == 160
    assert sample.stats["tokens_evaluated"] == int(sample.w.sum()) <= 160
    first, last = val.rows(np.array([0, len(val) - 1]))[0]["token_ids"]
    assert (sample.x["token_ids"][0] == first).all()  # evenly spaced: first and last row
    assert (sample.x["token_ids"][-1] == last).all()
    assert len(val.sample(10 ** 9)) == len(val)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_token_stream_is_detected_and_rebuilt(preprocessor, tmp_path, capsys, damage):
    cfg, root = DataConfig(), tmp_path / "cache"
    corpus = open_corpus(cfg, preprocessor.tokenizer, verbose=False, root=root)
    stream = corpus.folder / "train.bin"
    good = stream.read_bytes()
    if damage == "truncate":  # a crash or a full disk after the rename
        stream.write_bytes(good[:len(good) // 2])
    else:  # same size, one byte changed
        stream.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    shards = {p: p.stat().st_mtime_ns for p in root.glob("file-*")}
    again = open_corpus(cfg, preprocessor.tokenizer, verbose=False, root=root)
    assert f"token cache: {corpus.folder.name} is damaged (train.bin " in capsys.readouterr().out
    assert again.folder == corpus.folder and stream.read_bytes() == good
    assert {p: p.stat().st_mtime_ns for p in root.glob("file-*")} == shards  # sound: kept


FILL_ONE_ENTRY = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from pipeline.config import DataConfig
from pipeline.train.token_cache import open_corpus

class Bytes:  # a byte-level tokenizer: no model to load in each process
    end_token_id = 256
    merges = []
    def __call__(self, texts):
        return [list(t.encode()) for t in texts]
    def vocabulary_size(self):
        return 257
    def get_vocabulary(self):
        return [str(i) for i in range(257)]

corpus = open_corpus(DataConfig(path=sys.argv[2]), Bytes(), verbose=False, root=sys.argv[3])
print(corpus.folder.name, hashlib.sha256((corpus.folder / "train.bin").read_bytes()).hexdigest())
"""


def test_four_processes_fill_one_cold_entry_and_agree(tmp_path, kitchen_paragraphs):
    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(kitchen_paragraphs * 40), encoding="utf-8")
    script = tmp_path / "fill.py"
    script.write_text(FILL_ONE_ENTRY)
    import subprocess
    import sys

    from conftest import ROOT
    procs = [subprocess.Popen([sys.executable, str(script), str(ROOT), str(data),
                               str(tmp_path / "cache")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in results]
    outputs = {out.strip() for out, _ in results}
    assert len(outputs) == 1  # one split, the same bytes for everyone
    entries = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir())
    assert entries == ["file", "split"]  # no temporary folder, no lock left behind
