"""The notebooks' set-up on Colab: what the notebooks need, installed into the running kernel,
and the verification runtime (TFLite 2.16.1 with Flex) in `.venv-flex/`, both once per runtime.

Standard library only: this runs before the project's requirements are installed. Outside
Colab it does nothing (`make` builds `.venv` and `.venv-flex`).

Example (the first cell of each notebook):
    >>> from pipeline.setup_env import notebook_setup
    >>> notebook_setup(verification_runtime=True)   # 03_export: verifies in TFLite 2.16.1
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
COLAB_REQUIREMENTS = PROJECT / "requirements-colab.txt"
FLEX_REQUIREMENTS = PROJECT / "requirements-flex.txt"
FLEX_DIR = PROJECT / ".venv-flex"
DONE = "GPT2_PIPELINE_COLAB_INSTALLED"  # set in the kernel once its packages are installed


def on_colab() -> bool:
    return importlib.util.find_spec("google.colab") is not None


def notebook_setup(verification_runtime: bool = False) -> None:
    """On Colab: installs requirements-colab.txt into this kernel (once), and with
    `verification_runtime` builds `.venv-flex` when it is missing. Elsewhere: nothing."""
    if not on_colab():
        return
    if not os.environ.get(DONE):
        _pip(sys.executable, COLAB_REQUIREMENTS,
             "the notebooks' packages into this runtime (about 2 minutes, once per runtime)")
        os.environ[DONE] = "1"
    if verification_runtime:
        ensure_flex_runtime()


def ensure_flex_runtime(folder: Path = FLEX_DIR) -> Path:
    """Returns the Python of the verification runtime, building `folder` first if needed: a
    virtual environment with requirements-flex.txt (TensorFlow 2.16.1, whose TFLite
    interpreter links the Flex delegate, the runtime of the stock select-TF-ops AAR)."""
    python = folder / "bin" / "python"
    stamp = folder / ".installed-colab"
    if python.is_file() and stamp.is_file() and stamp.read_text() == FLEX_REQUIREMENTS.read_text():
        return python
    print(f"Building the verification runtime (TFLite 2.16.1 with Flex) in {folder} "
          f"(about 2 minutes, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    _pip(str(python), FLEX_REQUIREMENTS, "TensorFlow 2.16.1 for verification")
    stamp.write_text(FLEX_REQUIREMENTS.read_text())
    return python


def _pip(python: str, requirements: Path, what: str) -> None:
    """pip install -r, showing each package as it is collected (pip's own progress)."""
    print(f"Installing {what}: {requirements.name}", flush=True)
    started = time.time()
    proc = subprocess.Popen([python, "-m", "pip", "install", "--disable-pip-version-check",
                             "--progress-bar", "off", "-r", str(requirements)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        if line.startswith(("Collecting", "Installing collected", "Successfully")):
            print("  " + line.rstrip(), flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"pip could not install {requirements.name}:\n" + "\n".join(tail))
    print(f"  done in {time.time() - started:.0f} s", flush=True)
