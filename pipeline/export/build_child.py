"""A target's SavedModel built in a child process: preset in, SavedModel folder and facts out.

Loading the Keras model, generating the expected texts and building the TF graph leave
gigabytes resident in the process that did them, after both models are dropped (at GPT-2
medium the exporting process stayed at about 5 GB; not glibc's arenas: a fixed mmap
threshold changed nothing), and
the converter's child then comes on top (12.3-12.6 GB in all). Built in a child, that memory
goes back to the system when the child exits: the exporting process never holds a model
while the converter runs. `children.build_in_child` starts it.

    python -m pipeline.export.build_child text|litertlm CONFIG_YAML PRESET SAVED_MODEL FACTS_JSON
"""

from __future__ import annotations

from pipeline.config import load_config
from pipeline.fsutil import write_json
from pipeline.processes import child_main


def main(argv: list[str]) -> None:
    target, config, source, saved_model_dir, facts = argv
    cfg = load_config(config)
    if target == "text":
        from pipeline.export.text import build_text_model as build
    else:
        from pipeline.export.litertlm import build_streaming_model as build
    write_json(facts, build(cfg, source, saved_model_dir))


if __name__ == "__main__":
    child_main(main)
