"""The TFLite converter in a child process: SavedModel folder in, flatbuffer file out.

`TFLiteConverter.convert()` keeps memory after it returns, also after the converter is
deleted (tensorflow/tensorflow#122598), and an export converts up to four models in one
process (the teacher's and the student's text model and bundle). At GPT-2 medium that piled up
past Colab's 12 GB. In a child, each conversion's memory goes back to the system when the
child exits, and the exporting process never holds the converter's copies of the weights.
`children.convert_in_child` starts it.

    python -m pipeline.export.convert_child SAVED_MODEL_DIR OUT_FILE builtins|select_tf
"""

from __future__ import annotations

from pathlib import Path

from pipeline.processes import child_main


def main(argv: list[str]) -> None:
    from pipeline.export.tflite import convert_saved_model

    saved_model_dir, out, ops = argv
    Path(out).write_bytes(convert_saved_model(saved_model_dir, select_tf_ops=ops == "select_tf"))


if __name__ == "__main__":
    child_main(main)
