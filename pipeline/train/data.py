"""The user's own text: read .txt/.jsonl/.csv files, split train/validation, tokenize.

Formats:
  - .txt: one example per line, or blank-line-separated paragraphs (`txt_mode`);
  - .jsonl: one JSON object per line, the text in field `field`;
  - .csv: a header row, the text in column `field`;
  - a folder (every such file in it, sorted) or a glob pattern.

Example:
    >>> train, val = load_split(DataConfig(path="notes.txt"))
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import DataError

EXTENSIONS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv"}


@dataclass
class TokenizedSplit:
    x: dict  # {"token_ids": (N, T) int32, "padding_mask": (N, T) int32, 1 = real token}
    y: np.ndarray  # (N, T) next-token targets
    w: np.ndarray  # (N, T) 1.0 where the target is a real token
    stats: dict

    def __len__(self) -> int:
        return len(self.y)

    def rows(self, idx: np.ndarray):
        """Returns (x, y, w) of rows `idx`, as `token_cache.Windows.rows` does from disk."""
        return {k: v[idx] for k, v in self.x.items()}, self.y[idx], self.w[idx]


def find_files(path: str) -> list[Path]:
    """Returns the data files named by `path`: a file, a folder, or a glob pattern."""
    if any(c in path for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"data.path: no files match {path!r}")
        return files
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
        if not files:
            raise DataError(f"data.path: folder {p} has no .txt, .jsonl or .csv files")
        return files
    if not p.exists():
        raise DataError(f"data.path: {p} does not exist")
    return [p]


MAX_FILE_BYTES = 4 << 30  # one data file is parsed in RAM: split larger corpora into files


def read_text(path: Path) -> str:
    """Returns the file's UTF-8 text; raises DataError if it is empty, not a regular file,
    too large to parse at once, or not UTF-8."""
    try:
        info = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: not a regular file (a device, a pipe or a socket); give a "
                        f".txt, .jsonl or .csv file")
    if info.st_size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {info.st_size / 2**30:.1f} GiB in one file; split it into "
                        f"files of at most {MAX_FILE_BYTES >> 30} GiB in a folder "
                        f"(data.path: the folder)")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            f"re-save it as UTF-8"
        ) from None


def parse_txt(text: str, mode: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if mode == "auto":
        mode = "paragraph" if re.search(r"\n[ \t]*\n", text.strip()) else "line"
    if mode == "paragraph":
        return [p.strip() for p in re.split(r"\n[ \t]*\n", text)]
    return [line.strip() for line in text.split("\n")]


def parse_jsonl(text: str, field: str, path: Path) -> list[str]:
    out = []
    # JSON Lines ends records with \n only: U+2028, U+2029 or a lone \r inside a string are
    # text (str.splitlines() would cut the record there)
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{number}: JSON nested too deeply") from None
        except ValueError as e:  # e.g. an integer longer than Python's 4,300-digit limit
            raise DataError(f"{path}:{number}: not valid JSON ({_first_line(e)})") from None
        if not isinstance(record, dict) or field not in record:
            raise DataError(f"{path}:{number}: no field {field!r} (set data.field)")
        if not isinstance(record[field], str):
            raise DataError(f"{path}:{number}: field {field!r} is not a string")
        out.append(record[field])
    return out


def parse_csv(text: str, field: str, path: Path) -> list[str]:
    # newline="" semantics: \r\n, \n and a lone \r (old Mac files) all end rows outside quotes
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))  # a cell may be as long as the file
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or field not in reader.fieldnames:
            columns = ", ".join(reader.fieldnames or [])
            raise DataError(f"{path}: no column {field!r} (columns: {columns}; set data.field)")
        return [row[field] or "" for row in reader]
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    finally:
        csv.field_size_limit(limit)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def file_examples(path: Path, cfg: DataConfig) -> list[str]:
    """Returns the examples of one data file, stripped, at least `cfg.min_chars` long."""
    fmt = cfg.format
    if fmt == "auto":
        fmt = EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(
                f"{path}: unknown extension {path.suffix!r}; use .txt, .jsonl or .csv "
                f"or set data.format"
            )
    text = read_text(path)
    if fmt == "txt":
        found = parse_txt(text, cfg.txt_mode)
    elif fmt == "jsonl":
        found = parse_jsonl(text, cfg.field, path)
    else:
        found = parse_csv(text, cfg.field, path)
    return [e.strip() for e in found if len(e.strip()) >= cfg.min_chars]


def no_examples(cfg: DataConfig) -> DataError:
    return DataError(f"data.path: {cfg.path} has no examples of at least {cfg.min_chars} "
                     f"characters")


def load_examples(cfg: DataConfig) -> list[str]:
    """Returns the examples of every file named by `cfg.path`, in file order (all in RAM:
    for large corpora use `token_cache.open_corpus`, which reads one file at a time)."""
    examples = [e for path in find_files(cfg.path) for e in file_examples(path, cfg)]
    if not examples:
        raise no_examples(cfg)
    return examples


def check_data(cfg: DataConfig) -> int:
    """Parses every data file, one at a time, and returns the number of examples."""
    count = sum(len(file_examples(path, cfg)) for path in find_files(cfg.path))
    if not count:
        raise no_examples(cfg)
    return count


def validation_mask(num_examples: int, validation_fraction: float, seed: int) -> np.ndarray:
    """Returns which examples are held out: a seeded shuffle, at least one in each split."""
    if num_examples < 2:
        raise DataError(f"data: {num_examples} example found, at least 2 are needed to hold "
                        f"one out for validation")
    order = np.random.default_rng(seed).permutation(num_examples)
    n_val = min(num_examples - 1, max(1, math.ceil(num_examples * validation_fraction)))
    mask = np.zeros(num_examples, bool)
    mask[order[:n_val]] = True
    return mask


def split_examples(examples: list[str], validation_fraction: float, seed: int):
    """Returns (train, validation) examples, in order, as `validation_mask` assigns them."""
    held_out = validation_mask(len(examples), validation_fraction, seed)
    val = [e for e, v in zip(examples, held_out) if v]
    train = [e for e, v in zip(examples, held_out) if not v]
    return train, val


def load_split(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """Returns (train, validation) examples of the data named by `cfg`, split by its seed."""
    return split_examples(load_examples(cfg), cfg.validation_fraction, cfg.seed)


def tokenize(examples: list[str], preprocessor, packing: bool = False,
             chunk: int = 256) -> TokenizedSplit:
    """Returns the examples as rows of the preprocessor's sequence length.

    packing: the examples joined by `<|endoftext|>` (which also opens the stream, as it opens
    every prompt) and cut into contiguous windows, targets = inputs shifted by one; every
    token is a target exactly once and only the last window has padding.
    Else one example per row, `<start> tokens <end>`, padded or truncated.
    """
    length = preprocessor.sequence_length
    ids = [row for part in range(0, len(examples), chunk)
           for row in _token_ids(preprocessor, examples[part:part + chunk])]
    lengths = [len(row) for row in ids]
    stats = {"examples": len(examples), "tokens": int(sum(lengths)),
             "mean_tokens": float(np.mean(lengths)), "sequence_length": int(length),
             "packing": packing}
    if packing:
        split = _pack(ids, preprocessor.tokenizer.end_token_id, length)
        stats["truncated_share"] = 0.0
    else:
        split = _rows(examples, preprocessor, chunk)
        stats["truncated_share"] = float(np.mean([n + 2 > length for n in lengths]))
    stats["rows"] = int(len(split.y))
    stats["tokens_trained_per_epoch"] = int(split.w.sum())
    split.stats = stats
    return split


def _pack(ids: list, separator: int, length: int) -> TokenizedSplit:
    stream = [np.asarray([separator], "int32")]
    for row in ids:
        stream += [np.asarray(row, "int32"), np.asarray([separator], "int32")]
    flat = np.concatenate(stream)
    real = len(flat)  # positions 0..real-1 hold text; targets are positions 1..real-1
    n = -(-(real - 1) // length)
    flat = np.concatenate([flat, np.zeros(n * length + 1 - real, "int32")])
    position = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]  # (N, L + 1)
    windows = flat[position]
    return TokenizedSplit(x={"token_ids": windows[:, :-1], "padding_mask": (position[:, :-1] < real).astype("int32")},
                          y=windows[:, 1:], w=(position[:, 1:] < real).astype("float32"),
                          stats={})


def _rows(examples: list[str], preprocessor, chunk: int) -> TokenizedSplit:
    xs, ys, ws = [], [], []
    for part in range(0, len(examples), chunk):
        x, y, w = preprocessor(examples[part:part + chunk])
        xs.append({k: np.asarray(v, dtype="int32") for k, v in x.items()})
        ys.append(np.asarray(y))
        ws.append(np.asarray(w, dtype="float32"))
    return TokenizedSplit(x={k: np.concatenate([x[k] for x in xs]) for k in xs[0]},
                          y=np.concatenate(ys), w=np.concatenate(ws), stats={})


def _token_ids(preprocessor, texts: list[str]) -> list[list[int]]:
    ids = preprocessor.tokenizer(texts)
    return ids.to_list() if hasattr(ids, "to_list") else [list(row) for row in ids]


def describe(name: str, stats: dict) -> str:
    if stats["packing"]:
        line = (f"{name}: {stats['examples']} examples, {stats['tokens']:,} tokens packed into "
                f"{stats['rows']} windows of {stats['sequence_length']} (every token used)")
    else:
        line = (f"{name}: {stats['examples']} examples, {stats['tokens']:,} tokens "
                f"(mean {stats['mean_tokens']:.0f}), {stats['truncated_share']:.0%} truncated at "
                f"{stats['sequence_length']} tokens")
    if stats.get("rows_evaluated", stats["rows"]) < stats["rows"]:
        line += (f"; perplexity on {stats['rows_evaluated']} evenly spaced rows "
                 f"({stats['tokens_evaluated']:,} tokens, data.validation_tokens)")
    return line
