"""Runs a text `.tflite` in TFLite's Python interpreter with the Flex (select TF ops) delegate.

The interpreter is TF 2.16.1's (the runtime of the newest stock select-TF-ops AAR), and
keras-hub needs TF >= 2.20, so this file runs in a separate environment (`.venv-flex`, made by the
Makefile) as `python -m pipeline.runtime.flex_child MODEL.tflite PROMPTS.json OUT.json [THREADS]`
(parent side: `pipeline/runtime/flex.py`). It imports
nothing from the rest of the project, and not `tensorflow_text`: the text model needs only
core TF kernels, as on a phone's stock select-TF-ops runtime (the report says whether
anything loaded TF-Text anyway).
"""

import json
import sys
import time

import numpy as np
import tensorflow as tf


def run(model_path: str, prompts: list, threads: int | None = None) -> dict:
    """Runs each prompt in turn in one interpreter, as an app does; `threads` as an app sets
    them (Interpreter.Options().setNumThreads), else TFLite's default."""
    started = time.time()
    interpreter = tf.lite.Interpreter(model_path=model_path, num_threads=threads)
    runner = interpreter.get_signature_runner("serving_default")
    load_seconds = time.time() - started
    outputs, seconds = [], []
    for prompt in prompts:
        t = time.time()
        out = runner(prompt=np.array(prompt.encode("utf-8")))
        outputs.append(out["text"].item().decode("utf-8", errors="replace"))
        seconds.append(time.time() - t)
    return {"tensorflow": tf.__version__, "outputs": outputs, "seconds": seconds,
            "load_seconds": load_seconds, "total_seconds": time.time() - started,
            "threads": threads,
            "tensorflow_text_loaded": "tensorflow_text" in sys.modules}


def main(argv) -> int:
    if len(argv) not in (3, 4):
        print("usage: python -m pipeline.runtime.flex_child MODEL.tflite PROMPTS.json OUT.json "
              "[THREADS]", file=sys.stderr)
        return 2
    model, prompts_file, out_file = argv[:3]
    with open(prompts_file, encoding="utf-8") as f:
        prompts = json.load(f)
    result = run(model, prompts, int(argv[3]) if len(argv) == 4 else None)
    with open(out_file, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
