"""`python -m pipeline bench chain`: `pipeline run` end to end at GPT-2 medium (or base) shape.

Builds a preset of the shape (random weights, the real GPT-2 tokenizer; cached under the
output folder), then runs `python -m pipeline run` on it as a user would (the bundled corpus,
the default settings, a few optimizer steps per stage) and records, per stage, its wall time
and the peak resident memory of the whole process tree (the run, its notebook kernel and every
child it starts: Flex verification, LiteRT-LM), polled from /proc. The target is what
Colab's free runtime holds (about 12.7 GB): every stage at most 12 GB.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline.bench.gpt2_base import GPT2_BASE, gpt2_tokenizer
from pipeline.config import PROJECT_ROOT
from pipeline.report import write_benchmark

SHAPES = {"base": GPT2_BASE,
          "medium": dict(GPT2_BASE, num_layers=24, num_heads=16, hidden_dim=1024,
                         intermediate_dim=4096)}
# What README tells a user of the shape on Colab's free runtime: micro-batches keep the batch,
# the learning rate and the result and cut the activations held at once; no XLA step (it
# holds a second training state); LoRA, since full fine-tuning's AdamW state (weights,
# gradients, two slots, the accumulator: 7 copies of 1.4 GB at its peak) does not fit.
MEMORY_SETTINGS = {"medium": ("finetune.micro_batch_size=4", "distill.micro_batch_size=2",
                              "finetune.jit_compile=false", "finetune.lora_rank=8")}
STAGE_TARGET_GB = 12.0  # Colab's free runtime has about 12.7 GB of RAM


def build_preset(shape: str, folder: Path) -> Path:
    """Saves a keras-hub GPT-2 preset of `shape` with random weights (once), in a child
    process, so that this process holds no model while it measures the run."""
    if not (folder / "model.weights.h5").is_file():
        subprocess.run([sys.executable, "-c", "import sys; from pipeline.bench.chain_memory "
                        "import save_random_preset; save_random_preset(*sys.argv[1:])",
                        shape, str(folder)], cwd=PROJECT_ROOT, check=True)
    return folder


def save_random_preset(shape: str, folder: str) -> None:
    import keras_hub

    folder = Path(folder)
    s = SHAPES[shape]
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=s["vocabulary_size"], num_layers=s["num_layers"],
        num_heads=s["num_heads"], hidden_dim=s["hidden_dim"],
        intermediate_dim=s["intermediate_dim"], max_sequence_length=s["max_positions"])
    lm = keras_hub.models.GPT2CausalLM(
        backbone, keras_hub.models.GPT2CausalLMPreprocessor(gpt2_tokenizer()))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_to_preset(str(tmp))
    os.replace(tmp, folder)


def tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants, MB (VmRSS summed)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def run_chain(shape: str, out: Path, steps: int, extra: list[str]) -> dict:
    preset = build_preset(shape, out / f"gpt2_{shape}_preset")
    extra = [*(x for item in MEMORY_SETTINGS.get(shape, ()) for x in ("--set", item)), *extra]
    args = [sys.executable, "-m", "pipeline", "run", "configs/default.yaml", "--fresh",
            "--set", f"name=chain-{shape}", "--set", f"output_dir={out / 'runs'}",
            "--set", f"model.preset={preset}", "--set", "finetune.epochs=1",
            "--set", f"finetune.max_steps={steps}", "--set", f"distill.max_steps={steps}",
            "--set", "distill.epochs=1", *extra]
    child = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
    stage = {"name": "start"}
    started = {"start": time.time()}
    ended: dict = {}

    def follow():
        for line in child.stdout:
            sys.stdout.write(line)
            if line.startswith("== ") and ": " in line:
                stage["name"] = line[3:].split(":")[0].strip()
                started[stage["name"]] = time.time()
            elif line.startswith("== ") and " done in " in line:
                ended[stage["name"]] = time.time()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    peaks: dict = {}
    while child.poll() is None:
        rss = tree_rss_mb(child.pid)
        peaks[stage["name"]] = max(peaks.get(stage["name"], 0.0), rss)
        time.sleep(0.2)
    reader.join()
    rows = [{"stage": s, "seconds": round(ended.get(s, time.time()) - started[s], 1),
             "peak_rss_gb": round(peaks.get(s, 0.0) / 1024, 2)}
            for s in started if s != "start"]
    run_dir = out / "runs" / f"chain-{shape}"
    files = {str(p.relative_to(run_dir)): p.stat().st_size
             for p in sorted(run_dir.glob("export*/**/*")) if p.suffix in (".tflite", ".litertlm")}
    return {"date": datetime.date.today().isoformat(), "shape": shape,
            "parameters": _parameters(shape), "steps_per_stage": steps,
            "settings": extra[1::2],
            "exit_status": child.returncode, "rows": rows, "files": files,
            "meets": child.returncode == 0 and all(r["peak_rss_gb"] <= STAGE_TARGET_GB
                                                   for r in rows)}


def _parameters(shape: str) -> int:
    s = SHAPES[shape]
    h, i, layers = s["hidden_dim"], s["intermediate_dim"], s["num_layers"]
    per_layer = 4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h)
    return s["vocabulary_size"] * h + s["max_positions"] * h + layers * per_layer + 2 * h


def markdown(results: list[dict]) -> str:
    lines = [f"`pipeline run` per shape (random weights, the real tokenizer), "
             f"{results[0]['steps_per_stage']} optimizer steps per stage, {results[0]['date']}",
             "", f"| shape | stage | seconds | peak RSS GB (process tree) | <= "
             f"{STAGE_TARGET_GB:.0f} GB |", "|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            lines.append(f"| {r['shape']} ({r['parameters'] / 1e6:.0f} M) | {row['stage']} | "
                         f"{row['seconds']:.0f} | {row['peak_rss_gb']:.2f} | "
                         f"{'yes' if row['peak_rss_gb'] <= STAGE_TARGET_GB else 'NO'} |")
    lines += ["", "| shape | file | MB |", "|---|---|---|"]
    for r in results:
        lines += [f"| {r['shape']} | {name} | {size / 1e6:.1f} |"
                  for name, size in r["files"].items()]
    lines += [""] + [f"{r['shape']}: exit status {r['exit_status']}; settings "
                     f"{', '.join(r['settings']) or 'defaults'}" for r in results]
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline bench chain")
    parser.add_argument("--shapes", default="medium,base",
                        help=f"comma-separated, of {', '.join(SHAPES)} (default medium,base)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per stage")
    parser.add_argument("--out", default="runs/bench", help="folder for the JSON and Markdown")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides for every run (repeatable)")
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [s for s in shapes if s not in SHAPES]
    if bad or not shapes:
        parser.error(f"--shapes: {args.shapes!r}: name one or more of {', '.join(SHAPES)}")
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    extra = [x for item in args.set for x in ("--set", item)]
    results = [run_chain(shape, out, args.steps, extra) for shape in shapes]
    write_benchmark(str(out), "chain", {"shapes": results,
                                        "meets": all(r["meets"] for r in results)},
                    markdown(results))
    return 0 if all(r["meets"] for r in results) else 1
