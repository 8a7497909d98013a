"""The token cache: each data file tokenized once; training windows read from disk.

A real corpus takes minutes to tokenize and its ids do not fit in RAM as Python lists. So each
data file is tokenized once per (file contents, tokenizer, parsing settings) into a shard under
`<cache>/tokens/` (`run_folder.cache_dir()`), one file at a time, with a progress bar. A changed
file gets a new shard and its old shard is deleted; an unchanged corpus is not tokenized again.
The train/validation split (`data.validation_mask`, the same seeded shuffle of examples as
`data.load_split`) is written once per corpus and split settings as two token streams.
Training reads its windows from them (memory-mapped) through `tf.data` (`loop.training_batches`),
so memory does not grow with the corpus; evaluation reads a bounded, evenly spaced sample of
validation windows (`data.validation_tokens`).

Every entry is written into a temporary folder and renamed into place; its `meta.json`, written
last, lists each file's size and BLAKE2b checksum, and both are checked before the entry is
used, so a truncated or damaged entry is rebuilt (with a one-line notice), never trained on.
Entries are filled under a per-entry lock (`.<entry>.lock`), so concurrent runs and
`sweep --jobs N` on a cold cache share one fill; a stale shard is removed only when no process
holds its lock, and temporary folders left by a killed process are removed.

Layout of `<cache>/tokens/`:
  file-<settings>-<contents>/  ids.bin (each example's ids, then <|endoftext|>; uint16 when the
                               vocabulary fits, else int32), starts.npy (where each example
                               begins, plus the end), meta.json
  split-<key>/                 train.bin, validation.bin (one opening <|endoftext|>, then the
                               split's examples as above), *.starts.npy, meta.json

Example:
    >>> corpus = open_corpus(DataConfig(path="books/"), preprocessor.tokenizer)
    >>> train = corpus.windows("train", 256, packing=True)      # rows read from disk
    >>> val = corpus.windows("validation", 256, True).sample(65_536)  # a TokenizedSplit in RAM
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import PipelineError
from pipeline.fsutil import (LockHeld, atomic_dir, file_lock, remove_leftovers, seal_folder,
                             sealed_problem)
from pipeline.run_folder import cache_dir
from pipeline.train.checkpoints import progress_bar
from pipeline.train.data import (TokenizedSplit, file_examples, find_files, no_examples,
                                 validation_mask)

SPLITS = ("train", "validation")
CHUNK_EXAMPLES = 1024  # examples per tokenizer call


class Windows:
    """The rows of one split, read from its token stream on disk.

    packing: contiguous windows of `length` tokens (targets shifted by one; every token a
    target exactly once; only the last window padded). Else one example per row,
    `<|endoftext|> ids <|endoftext|>`, cut or padded to `length + 1`, as keras-hub's
    `GPT2CausalLMPreprocessor` makes it.
    """

    def __init__(self, folder: Path, split: str, length: int, packing: bool, end_id: int,
                 dtype: str):
        self.ids = np.memmap(folder / f"{split}.bin", dtype=dtype, mode="r")
        self.starts = np.load(folder / f"{split}.starts.npy")
        self.length, self.packing, self.end_id = length, packing, end_id
        self.real = len(self.ids)

    def __len__(self) -> int:
        if self.packing:
            return -(-(self.real - 1) // self.length)
        return len(self.starts) - 1

    def rows(self, idx):
        """Returns (x, y, w) of rows `idx` (numpy), reading only those rows from disk."""
        idx = np.asarray(idx, "int64")
        span = np.arange(self.length + 1)
        if self.packing:
            position = idx[:, None] * self.length + span
            valid = position < self.real
        else:
            kept = np.minimum(self.starts[idx + 1] - self.starts[idx] - 1, self.length - 1)
            position = self.starts[idx, None] - 1 + span  # from the <|endoftext|> before it
            valid = span < (kept + 2)[:, None]
        tokens = np.where(valid, self.ids[np.minimum(position, self.real - 1)], 0)
        tokens = tokens.astype("int32")
        if not self.packing:  # a cut example still ends with <|endoftext|>
            tokens[np.arange(len(idx)), kept + 1] = self.end_id
        x = {"token_ids": tokens[:, :-1], "padding_mask": valid[:, :-1].astype("int32")}
        return x, tokens[:, 1:], valid[:, 1:].astype("float32")

    @property
    def stats(self) -> dict:
        """What the metrics record of this split (computed from the index, not the ids)."""
        lengths = np.diff(self.starts) - 1
        if self.packing:
            trained, truncated = self.real - 1, 0.0
        else:
            trained = int(np.minimum(lengths, self.length - 1).sum() + len(lengths))
            truncated = float(np.mean(lengths + 2 > self.length))
        return {"examples": int(len(lengths)), "tokens": int(lengths.sum()),
                "mean_tokens": float(lengths.mean()), "sequence_length": self.length,
                "packing": self.packing, "truncated_share": truncated, "rows": len(self),
                "tokens_trained_per_epoch": int(trained)}

    def sample(self, max_tokens: int) -> TokenizedSplit:
        """Returns at most `max_tokens // length` rows, evenly spaced (all when they fit), in
        RAM: the bounded validation sample every perplexity in a run is computed on."""
        count = min(len(self), max(1, max_tokens // self.length))
        idx = np.unique(np.linspace(0, len(self) - 1, count).round().astype("int64"))
        x, y, w = self.rows(idx)
        stats = {**self.stats, "rows_evaluated": int(len(idx)),
                 "tokens_evaluated": int(w.sum()), "max_tokens": int(max_tokens)}
        return TokenizedSplit(x=x, y=y, w=w, stats=stats)


@dataclass
class Corpus:
    """A tokenized corpus on disk, split into train and validation streams."""
    folder: Path
    end_id: int
    dtype: str
    files: list

    def windows(self, split: str, length: int, packing: bool) -> Windows:
        return Windows(self.folder, split, length, packing, self.end_id, self.dtype)


def open_corpus(cfg: DataConfig, tokenizer, verbose: bool = True, root=None) -> Corpus:
    """Returns the corpus of `cfg` tokenized by `tokenizer`, from the cache where it can."""
    root = Path(root or cache_dir() / "tokens")
    root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root)
    files = find_files(cfg.path)
    identity = _digest([_tokenizer_digest(tokenizer), cfg.format, cfg.txt_mode, cfg.field,
                        cfg.min_chars])
    contents = [_file_digest(path) for path in files]
    shards = [root / f"file-{identity}-{c}" for c in contents]
    todo = [(path, shard) for path, shard in zip(files, shards) if not _verified(shard)]
    bar = progress_bar(total=sum(p.stat().st_size for p, _ in todo), desc="tokenizing",
                       unit="B", unit_scale=True, mininterval=2.0,
                       disable=not verbose or not todo)
    for path, shard in todo:
        with _entry_lock(shard):
            if not _verified(shard, notice=True):  # another process may have filled it
                _write_shard(path, shard, cfg, tokenizer, bar)
        for stale in root.glob(f"file-{identity}-*"):  # the same file's earlier contents
            if stale != shard and _meta(stale).get("path") == str(path.resolve()):
                _remove_unused(stale)
    bar.close()
    metas = [_meta(shard) for shard in shards]
    if not sum(m["examples"] for m in metas):
        raise no_examples(cfg)
    dtype = _dtype(tokenizer)
    split = root / ("split-" + _digest([identity, contents, cfg.validation_fraction, cfg.seed]))
    if not _verified(split):
        with _entry_lock(split):
            if not _verified(split, notice=True):
                with contextlib.ExitStack() as held:  # no shard removed while it is read
                    for shard in sorted(set(shards)):
                        held.enter_context(_entry_lock(shard))
                        if not _verified(shard):
                            raise PipelineError(f"data file changed while it was read (token "
                                                f"cache entry {shard} is gone): run again")
                    _write_split(split, shards, metas, cfg, tokenizer.end_token_id, dtype)
    return Corpus(split, int(tokenizer.end_token_id), dtype,
                  [{"path": m["path"], "examples": m["examples"], "tokens": m["tokens"]}
                   for m in metas])


def _write_shard(path: Path, shard: Path, cfg: DataConfig, tokenizer, bar) -> None:
    examples = file_examples(path, cfg)
    dtype, end, size = _dtype(tokenizer), int(tokenizer.end_token_id), path.stat().st_size
    lengths = []
    with atomic_dir(shard) as tmp:
        with open(tmp / "ids.bin", "wb") as out:
            for first in range(0, len(examples), CHUNK_EXAMPLES):
                rows = _token_ids(tokenizer, examples[first:first + CHUNK_EXAMPLES])
                np.asarray([t for row in rows for t in (*row, end)], dtype).tofile(out)
                before = size * len(lengths) // len(examples)
                lengths += [len(row) + 1 for row in rows]
                bar.update(size * len(lengths) // len(examples) - before)  # bytes, pro rata
        np.save(tmp / "starts.npy", np.cumsum([0] + lengths, dtype="int64"))
        _seal(tmp, {"path": str(path.resolve()), "examples": len(examples),
                    "tokens": int(sum(lengths)) - len(examples), "dtype": dtype,
                    "settings": asdict(cfg)})


def _write_split(folder: Path, shards, metas, cfg: DataConfig, end: int, dtype: str) -> None:
    """Writes the train and validation streams: the examples `validation_mask` assigns to
    each, in corpus order, copied a block at a time from the shards."""
    held_out = validation_mask(sum(m["examples"] for m in metas), cfg.validation_fraction,
                               cfg.seed)
    with atomic_dir(folder) as tmp:
        for split in SPLITS:
            wanted = held_out if split == "validation" else ~held_out
            starts, first = [1], 0
            with open(tmp / f"{split}.bin", "wb") as out:
                np.asarray([end], dtype).tofile(out)
                for shard, meta in zip(shards, metas):
                    ids = np.memmap(shard / "ids.bin", dtype=dtype, mode="r")
                    bounds = np.load(shard / "starts.npy")
                    chosen = np.flatnonzero(wanted[first:first + meta["examples"]])
                    first += meta["examples"]
                    for block in range(0, len(chosen), 8192):
                        k = chosen[block:block + 8192]
                        a, n = bounds[k], bounds[k + 1] - bounds[k]
                        ids[np.repeat(a - np.cumsum(n) + n, n) + np.arange(n.sum())].tofile(out)
                        starts.extend((starts[-1] + np.cumsum(n)).tolist())
            np.save(tmp / f"{split}.starts.npy", np.asarray(starts, "int64"))
        _seal(tmp, {"shards": [str(s) for s in shards]})


def _token_ids(tokenizer, texts: list[str]):
    ids = tokenizer(texts)
    return ids.to_list() if hasattr(ids, "to_list") else ids


def _dtype(tokenizer) -> str:
    return "uint16" if tokenizer.vocabulary_size() <= 65536 else "int32"


def _tokenizer_digest(tokenizer) -> str:
    return _digest([type(tokenizer).__name__, tokenizer.get_vocabulary(),
                    list(getattr(tokenizer, "merges", []) or [])])


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:16]


def _digest(parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _seal(folder: Path, meta: dict) -> None:
    seal_folder(folder, meta, "meta.json")


def _problem(folder: Path) -> str | None:
    return sealed_problem(folder, "meta.json")


def _verified(folder: Path, notice: bool = False) -> bool:
    problem = _problem(folder)
    if problem and problem != "missing" and notice:
        print(f"token cache: {folder.name} is damaged ({problem}): rebuilding it", flush=True)
    return problem is None


def _entry_lock(folder: Path):
    return file_lock(folder.with_name(f".{folder.name}.lock"), wait=True)


def _remove_unused(folder: Path) -> None:
    """Removes a cache entry unless another process holds its lock (it is reading it)."""
    try:
        with file_lock(folder.with_name(f".{folder.name}.lock")):
            shutil.rmtree(folder, ignore_errors=True)
    except LockHeld:
        pass


def _meta(folder: Path) -> dict:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


