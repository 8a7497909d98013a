"""Command line: `python -m pipeline --help`."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

import yaml

from pipeline.config import Sampler, Sampling, load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.report import read_metrics
from pipeline.run_folder import RunFolder, writable_folder
from pipeline.signals import die_with_parent, stop_on_sigterm

# Each command imports its stage inside its function: stage modules load TensorFlow and
# keras-hub (several seconds), which `--help`, `generate` and config errors do not need.


def parse_sets(items: list[str]) -> dict:
    """Turns ["finetune.epochs=1", "name=x"] into nested overrides; values are YAML scalars."""
    overrides: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. finetune.epochs=1")
        node = overrides
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: an earlier --set gave "
                                  f"{'.'.join(parents[:i + 1])} a value, not settings")
        if isinstance(node.get(leaf), dict):
            raise ConfigError(f"--set {item!r}: an earlier --set gave settings inside {key}")
        try:
            node[leaf] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as e:
            what = str(getattr(e, "problem", "") or "not a YAML value").strip()
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({what}); quote "
                              f"text, e.g. --set '{key}=\"...\"'") from None
    return overrides


def cmd_run(args) -> None:
    from pipeline.run import run

    stop_on_sigterm()
    die_with_parent()
    folder = run(args.config, parse_sets(args.set), fresh=args.fresh)
    print(f"Run finished: {folder}")


def cmd_sweep(args) -> None:
    from pipeline.sweep.run import main as sweep_main

    stop_on_sigterm()
    sys.exit(sweep_main(args.sweep, jobs=args.jobs))


def stage_folder(args, cfg, stage: str) -> RunFolder:
    """The folder a direct stage command writes: --run-dir, else <output_dir>/<name>. A
    finished `pipeline run` folder, a sweep's folder, or one where this stage already finished
    is refused: a direct command never edits a finished run in place (a sweep trusts it)."""
    root = args.run_dir or os.path.join(cfg.output_dir, cfg.name)
    writable_folder(os.path.dirname(os.path.abspath(root)), "--run-dir")
    folder = RunFolder(root)
    done = read_metrics(folder.root) if folder.root.is_dir() else {}
    why = ("a finished run (made by pipeline run)" if "run" in done else
           "a sweep's folder" if (folder.root / "points").is_dir() else
           f"a folder where {stage} already finished" if stage in done else "")
    if why:
        raise PipelineError(f"{folder.root} is {why}: give --run-dir a new folder (a direct "
                            f"{stage} never edits a finished one)")
    return folder


def cmd_finetune(args) -> None:
    from pipeline.train.finetune import finetune

    cfg = load_config(args.config, parse_sets(args.set))
    with stage_folder(args, cfg, "finetune").lock() as folder:
        result = finetune(cfg, folder.root)
    m = result.metrics
    print(f"validation perplexity {m['before']['val_perplexity']:.2f} -> "
          f"{m['after']['val_perplexity']:.2f}; preset: {result.preset_dir}")


def cmd_distill(args) -> None:
    from pipeline.train.distill import distill

    cfg = load_config(args.config, parse_sets(args.set))
    with stage_folder(args, cfg, "distill").lock() as folder:
        result = distill(cfg, folder.root, teacher=args.teacher)
    ppl = result.metrics["val_perplexity"]
    print(f"perplexity teacher {ppl['teacher']:.2f}, student {ppl['student']:.2f}, baseline "
          f"{ppl['baseline']:.2f}; preset: {result.preset_dir}")


def cmd_export(args) -> None:
    from pipeline.export.stage import export_stage

    cfg = load_config(args.config, parse_sets(args.set))
    if args.preset:  # the named preset instead of the run's models, as export.preset does
        cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, preset=args.preset))
    with stage_folder(args, cfg, "export").lock() as folder:
        metrics = export_stage(cfg, folder.root)
    for role, targets in metrics.items():
        for target, m in targets.items():
            print(f"{role} {target}: {m['file']} ({m['size_bytes'] / 1e6:.1f} MB)")


def cmd_generate(args) -> None:
    from pipeline.runtime.litertlm import (check_prompt, context_of, engine, find_bundle,
                                           stream_generate)

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: {args.max_new_tokens} must be >= 1")
    if not args.temperature > 0 or not math.isfinite(args.temperature):
        raise ConfigError(f"--temperature: {args.temperature} must be a number > 0")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p: {args.top_p} must be in (0, 1]")
    if args.top_k < 1:
        raise ConfigError(f"--top-k: {args.top_k} must be >= 1")
    if args.threads < 1:
        raise ConfigError(f"--threads: {args.threads} must be >= 1")
    if not 0 <= args.seed < 2 ** 32:
        raise ConfigError(f"--seed: {args.seed} must be in [0, 2**32)")
    bundle = find_bundle(args.bundle)
    context = context_of(bundle)
    sampling = Sampling(Sampler(args.sampler), top_k=args.top_k, top_p=args.top_p,
                        temperature=args.temperature, seed=args.seed)
    n = check_prompt(bundle, args.prompt, context)
    try:
        eng = engine(bundle, args.threads, max_tokens=context)
    except (RuntimeError, ValueError) as e:
        raise PipelineError(f"the runtime cannot open {bundle}: {_first_line(e)}") from None
    try:
        new = min(args.max_new_tokens, context - n)
        print(args.prompt, end="", flush=True)
        for piece in stream_generate(bundle, args.prompt, new, sampling, eng=eng):
            print(piece, end="", flush=True)
        print()
    except (RuntimeError, ValueError) as e:  # e.g. a prompt too long for a bare bundle
        print(flush=True)
        raise PipelineError(f"the runtime refused the prompt: {_first_line(e)}") from None
    finally:
        eng.close()


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def cmd_bench(args) -> None:
    from pipeline.bench import chain_memory, export_size, finetune_speed, litertlm_speed

    mains = {"export": export_size.main, "litertlm": litertlm_speed.main,
             "finetune": finetune_speed.main, "chain": chain_memory.main}
    if not args.rest or args.rest[0] not in mains:
        raise ConfigError("bench: name one benchmark: export (text-model sizes), litertlm "
                          "(LiteRT-LM vs Keras speed), finetune (training tokens/s, MFU) or chain "
                          "(pipeline run at GPT-2 medium shape: stage times, peak memory); "
                          "add --help for its options")
    sys.exit(mains[args.rest[0]](args.rest[1:]))


def cmd_build_base(args) -> None:
    from pipeline.train.embedded_base import embedded_preset

    print(embedded_preset())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Fine-tune GPT-2 from a keras-hub preset on your own text and take it to a phone.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p, required=True):
        p.add_argument("config", nargs=None if required else "?",
                       help="YAML file of overrides (see README: Config reference)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one setting, e.g. --set finetune.epochs=1 (repeatable)")
        return p

    p = with_config(sub.add_parser("run", help="run the stage notebooks with papermill into "
                                               "<output_dir>/<name>/"))
    p.add_argument("--fresh", action="store_true",
                   help="start over: do not reuse the stages an interrupted attempt finished")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("sweep", help="one run per point of a grid of overrides, then a summary "
                                     "(README: Sweeps)")
    p.add_argument("sweep", help="sweep YAML: config, overrides, grid or points, metric")
    p.add_argument("--jobs", type=int, default=1,
                   help="points run at once (default 1: one run already uses every core)")
    p.set_defaults(func=cmd_sweep)
    p = with_config(sub.add_parser("finetune", help="run the fine-tuning stage directly"),
                    required=False)
    p.add_argument("--run-dir", help="output folder (default <output_dir>/<name>)")
    p.set_defaults(func=cmd_finetune)
    p = with_config(sub.add_parser("distill", help="distill a teacher preset into a smaller "
                                                   "student"), required=False)
    p.add_argument("--teacher", help="teacher preset (default: the run's fine-tuned model)")
    p.add_argument("--run-dir", help="output folder (default <output_dir>/<name>)")
    p.set_defaults(func=cmd_distill)
    p = with_config(sub.add_parser("export", help="export a preset as a verified .tflite text "
                                                  "model"), required=False)
    p.add_argument("--preset", help="preset to export (default: export.preset, else the run's "
                                    "fine-tuned model)")
    p.add_argument("--run-dir", help="output folder (default <output_dir>/<name>)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("generate", help="stream text from a .litertlm bundle with LiteRT-LM")
    p.add_argument("bundle", help="a .litertlm file or a run folder (uses export/litertlm/)")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sampler", choices=[m.value for m in Sampler], default="greedy")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("bench", help="benchmarks on a GPT-2-base-shaped model "
                                     "(`bench export --help`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("build-base", help="build (or find in the cache) the embedded base preset "
                                          "and print its folder")
    p.set_defaults(func=cmd_build_base)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, a folder removed or made read-only while running
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
