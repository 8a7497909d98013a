"""Running a `.litertlm` bundle with the LiteRT-LM runtime: engine, streaming, prompt checks.

Example:
    >>> for piece in stream_generate("gpt2.litertlm", "Tomato soup.", max_new_tokens=32):
    ...     print(piece, end="", flush=True)
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import litert_lm

from pipeline.config import Sampler, Sampling
from pipeline.errors import PipelineError
from pipeline.fsutil import file_lock, read_seal, seal_folder, sealed_problem
from pipeline.run_folder import RunFolder, cache_dir as pipeline_cache


def sampler_config(sampling: Sampling):
    """Returns LiteRT-LM's sampler settings for `sampling` (greedy = top-k 1)."""
    greedy = sampling.sampler == Sampler.GREEDY
    return litert_lm.SamplerConfig(
        top_k=1 if greedy else sampling.top_k,
        top_p=sampling.top_p if sampling.sampler == Sampler.TOP_P else 1.0,
        temperature=1.0 if greedy else sampling.temperature, seed=sampling.seed)


def find_bundle(path) -> Path:
    """Returns the .litertlm named by `path`: the file itself, or the teacher's in a run;
    its header and sections checked (`check_bundle`)."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".litertlm":
            raise PipelineError(f"{p} is not a .litertlm bundle")
        return check_bundle(p)
    if p.is_dir():
        found = RunFolder(p).bundles() + sorted(p.glob("*.litertlm"))
        if found:
            return check_bundle(found[0])
        raise PipelineError(f"{p} holds no .litertlm bundle (export it with `python -m "
                            f"pipeline export` and export.targets including litertlm)")
    raise PipelineError(f"{p} does not exist: give a .litertlm file or a run folder")


def check_bundle(bundle: Path) -> Path:
    """Reads the bundle's header (magic, version, section table) and checks that every section
    lies inside the file, so that a truncated or foreign file is one line here rather than an
    abort inside the runtime."""
    import struct

    from litert_lm_builder import litertlm_core as core
    from litert_lm_builder import litertlm_header_schema_py_generated as schema

    size = bundle.stat().st_size

    def bad(why: str) -> PipelineError:
        return PipelineError(f"{bundle} is not a complete .litertlm bundle ({why}): export it "
                             f"again or copy the whole file")

    with open(bundle, "rb") as f:
        head = f.read(core.HEADER_BEGIN_BYTE_OFFSET)
        if len(head) < core.HEADER_BEGIN_BYTE_OFFSET or head[:8] != core.HEADER_MAGIC_BYTES:
            raise bad("no LITERTLM header")
        end = struct.unpack_from("<Q", head, core.HEADER_END_LOCATION_BYTE_OFFSET)[0]
        if not core.HEADER_BEGIN_BYTE_OFFSET < end <= size:
            raise bad(f"its header ends at byte {end}, the file has {size}")
        header = f.read(end - core.HEADER_BEGIN_BYTE_OFFSET)
    try:
        sections = schema.LiteRTLMMetaData.GetRootAs(header, 0).SectionMetadata()
        spans = [(sections.Objects(i).BeginOffset(), sections.Objects(i).EndOffset())
                 for i in range(sections.ObjectsLength() if sections else 0)]
    except Exception as e:  # noqa: BLE001 (a damaged flatbuffer raises anything)
        raise bad(f"its section table cannot be read: {type(e).__name__}") from None
    if not spans:
        raise bad("it has no sections")
    for i, (begin, stop) in enumerate(spans):
        if not end <= begin <= stop <= size:
            raise bad(f"section {i} spans bytes {begin}-{stop}, the file has {size}")
    return bundle


def context_of(bundle: Path) -> int:
    """Returns max_num_tokens from the bundle's metadata (written next to it on export)."""
    meta = bundle.parent / "llm_metadata.textproto"
    if meta.is_file():
        for line in meta.read_text().splitlines():
            if line.startswith("max_num_tokens:"):
                return int(line.split(":")[1])
    return 1024


def check_prompt(bundle: Path, prompt: str, context: int) -> int:
    """Returns the prompt's token count (start token included) or raises a one-line error.

    Uses the tokenizer.json exported beside the bundle, so no runtime is started.
    """
    if not prompt.strip():
        raise PipelineError("the prompt is empty: give some text to continue")
    tokenizer_json = bundle.parent / "tokenizer.json"
    if not tokenizer_json.is_file():
        return 1  # a bare bundle: the runtime itself refuses over-long prompts
    import tokenizers  # here only: a process that just runs the bundle stays 5 MB smaller

    n = len(tokenizers.Tokenizer.from_file(str(tokenizer_json)).encode(prompt).ids) + 1
    if n >= context:
        raise PipelineError(f"the prompt has {n} tokens but the model's context is {context}: "
                            f"shorten it to fewer than {context - 1} tokens")
    return n


CACHE_SEAL = "cache_seal.json"


def engine(bundle: Path, threads: int = 2, max_tokens: int | None = None, cache_dir=None):
    """Returns a LiteRT-LM engine on the CPU; `cache_dir` keeps XNNPACK's packed weights.

    Default: one folder per bundle (its path, size and time) under `litertlm/` in the
    pipeline's own cache, not a folder shared in /tmp. That folder is sealed (sizes and
    checksums) once the engine has written it, checked before each start, and rebuilt with a
    one-line notice when damaged; starts that share it take turns under its lock.
    """
    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)  # quiet the runtime's INFO logs
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return _start(bundle, threads, max_tokens, Path(cache_dir))
    info = Path(bundle).resolve().stat()
    key = hashlib.blake2b(f"{Path(bundle).resolve()}|{info.st_size}|{info.st_mtime_ns}".encode(),
                          digest_size=8).hexdigest()
    entry = pipeline_cache() / "litertlm" / f"{Path(bundle).stem}-{key}"
    entry.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(entry.with_name(f".{entry.name}.lock"), wait=True):
        problem = sealed_problem(entry, CACHE_SEAL)
        if problem is not None and problem != "missing":
            if read_seal(entry, CACHE_SEAL):
                print(f"LiteRT-LM cache {entry} is damaged ({problem}): rebuilding it",
                      flush=True)
            shutil.rmtree(entry)  # ours: made by an earlier start, never sealed or damaged
        entry.mkdir(exist_ok=True)
        eng = _start(bundle, threads, max_tokens, entry)
        if problem is not None:
            seal_folder(entry, {"bundle": str(bundle)}, CACHE_SEAL)
    return eng


def _start(bundle: Path, threads: int, max_tokens: int | None, cache: Path):
    # float32 activations: the runtime's default for text decoders is fp16, which would
    # break exact parity with Keras.
    eng = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(thread_count=threads),
                           max_num_tokens=max_tokens, cache_dir=str(cache),
                           activation_data_type=litert_lm.ActivationDataType.FLOAT32,
                           enable_benchmark=True)
    return eng


def stream_generate(bundle, prompt: str, max_new_tokens: int = 64,
                    sampling: Sampling = Sampling(), threads: int = 2, eng=None):
    """Yields the generated text piece by piece (the prompt is not repeated)."""
    owned = eng is None
    eng = eng or engine(Path(bundle), threads)
    try:
        session = eng.create_session(apply_prompt_template=False,
                                     sampler_config=sampler_config(sampling),
                                     max_output_tokens=max_new_tokens)
        session.run_prefill([prompt])
        for response in session.run_decode_async():
            if response.texts:
                yield response.texts[0]
        session.close()
    finally:
        if owned:
            eng.close()
