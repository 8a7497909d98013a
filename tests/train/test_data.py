import json

import pytest

from pipeline.config import DataConfig
from pipeline.train.data import load_examples, split_examples, tokenize
from pipeline.errors import DataError


def load(path, **kw):
    return load_examples(DataConfig(path=str(path), **kw))


def test_txt_lines(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  \nsecond line\r\nthird\n")
    # Blank lines make auto choose paragraphs; force lines.
    assert load(tmp_path / "a.txt", txt_mode="line") == ["first line", "second line", "third"]
    (tmp_path / "b.txt").write_text("one\ntwo\nthree\n")
    assert load(tmp_path / "b.txt") == ["one", "two", "three"]


def test_txt_paragraphs(tmp_path):
    (tmp_path / "a.txt").write_text("Para one\nstill one.\n\nPara two.\n \n\nPara three.")
    assert load(tmp_path / "a.txt") == ["Para one\nstill one.", "Para two.", "Para three."]


def test_jsonl_field(tmp_path):
    lines = [json.dumps({"body": "héllo wörld", "id": 1}), "", json.dumps({"body": "second"})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert load(tmp_path / "a.jsonl", field="body") == ["héllo wörld", "second"]
    with pytest.raises(DataError, match=r"a.jsonl:1: no field 'text'"):
        load(tmp_path / "a.jsonl")


def test_jsonl_bad_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: not valid JSON"):
        load(tmp_path / "a.jsonl")


def test_csv_column(tmp_path):
    (tmp_path / "a.csv").write_text('id,review\n1,"Good, with a comma"\n2,"Multi\nline"\n3,\n')
    assert load(tmp_path / "a.csv", field="review") == ["Good, with a comma", "Multi\nline"]
    with pytest.raises(DataError, match=r"no column 'text' \(columns: id, review"):
        load(tmp_path / "a.csv")


def test_folder_and_glob(tmp_path):
    (tmp_path / "b.txt").write_text("from b\n")
    (tmp_path / "a.txt").write_text("from a\n")
    (tmp_path / "c.jsonl").write_text('{"text": "from c"}\n')
    (tmp_path / "notes.md").write_text("ignored in folders\n")
    assert load(tmp_path) == ["from a", "from b", "from c"]
    assert load(tmp_path / "*.txt") == ["from a", "from b"]
    with pytest.raises(DataError, match="no files match"):
        load(tmp_path / "*.csv")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nope.txt")


def test_empty_file(tmp_path):
    (tmp_path / "a.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="a.txt: file is empty"):
        load(tmp_path / "a.txt")


def test_undecodable_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 at offset 3\)"):
        load(tmp_path / "a.txt")


def test_empty_after_filtering(tmp_path):
    (tmp_path / "a.txt").write_text("a\nbb\n")
    with pytest.raises(DataError, match="no examples of at least 5 characters"):
        load(tmp_path / "a.txt", min_chars=5)


def test_unknown_extension(tmp_path):
    (tmp_path / "a.md").write_text("text\n")
    with pytest.raises(DataError, match="unknown extension '.md'"):
        load(tmp_path / "a.md")
    assert load(tmp_path / "a.md", format="txt") == ["text"]


def test_split_is_deterministic_and_disjoint():
    examples = [f"example {i}" for i in range(50)]
    train, val = split_examples(examples, 0.1, seed=3)
    assert (train, val) == split_examples(examples, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert sorted(train + val) == sorted(examples)
    assert split_examples(examples, 0.1, seed=4)[1] != val
    with pytest.raises(DataError, match="at least 2"):
        split_examples(["only"], 0.1, seed=0)


def test_tokenize_stats(tiny_preset):
    import keras_hub

    pre = keras_hub.models.GPT2CausalLMPreprocessor.from_preset(str(tiny_preset),
                                                                sequence_length=16)
    texts = ["short", "a much longer example that will not fit in sixteen tokens at all, surely"]
    split = tokenize(texts, pre)
    ids = pre.tokenizer(texts)
    n_short, n_long = len(ids[0]), len(ids[1])
    assert n_short + 2 <= 16 < n_long + 2
    assert split.stats["examples"] == 2
    assert split.stats["tokens"] == n_short + n_long
    assert split.stats["truncated_share"] == 0.5
    assert split.x["token_ids"].shape == (2, 16)
    # Targets are the inputs shifted by one; weights cover start..end of the short example.
    assert (split.y[1, :-1] == split.x["token_ids"][1, 1:]).all()
    assert split.w[0].sum() == n_short + 1


def test_packing_trains_every_token_once(tiny_preset, kitchen_lines):
    import keras_hub

    pre = keras_hub.models.GPT2CausalLMPreprocessor.from_preset(str(tiny_preset),
                                                                sequence_length=24)
    texts = kitchen_lines[:12]
    split = tokenize(texts, pre, packing=True)
    end = pre.tokenizer.end_token_id
    docs = [list(map(int, row)) for row in pre.tokenizer(texts)]
    expected = [end] + [t for doc in docs for t in doc + [end]]  # the stream, separators in
    # Each target position is trained once: the weighted targets, in order, are the stream
    # after its opening separator; the unpadded inputs are the stream as far as windows reach.
    targets = split.y[split.w > 0].tolist()
    inputs = split.x["token_ids"][split.x["padding_mask"] == 1].tolist()
    assert targets == expected[1:]
    assert inputs == expected[:min(len(expected), split.y.size)]
    assert (split.y[:, :-1] == split.x["token_ids"][:, 1:]).all()  # labels = inputs shifted
    assert split.w[:-1].all() and split.x["padding_mask"][:-1].all()  # only the last is padded
    assert targets.count(end) == len(texts)  # every document boundary carries <|endoftext|>
    s = split.stats
    assert s["packing"] and s["truncated_share"] == 0.0 and s["rows"] == len(split.y)
    assert s["tokens_trained_per_epoch"] == s["tokens"] + len(texts) == len(expected) - 1
