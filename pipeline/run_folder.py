"""Every path of a run, in one place, and the lock that keeps two runs out of one folder.

A run folder (`<output_dir>/<name>/`, built as `<name>.partial/` by `python -m pipeline run`):
  config.yaml                 the resolved config
  metrics.json                one section per stage
  notebooks/                  the executed notebooks
  finetune/preset/            the fine-tuned model (keras-hub preset) + run_config.yaml
  finetune/checkpoints/       weights and optimizer state after each epoch, latest.json (the
                              data order is a function of seed and epoch: no random state)
  finetune/tensorboard/, loss_curve.png, generations.json
  distill/preset/             the student (keras-hub preset) + run_config.yaml
  distill/perplexity.png, generations.json
  export/<model>_<target>/    what mobile teams receive (`text`, `litertlm`; the teacher has
                              no prefix, the student `student_`) + run_config.yaml

Example:
    >>> folder = RunFolder("runs/default")
    >>> folder.finetune_preset
    PosixPath('runs/default/finetune/preset')
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PROJECT_ROOT, ExportTarget
from pipeline.errors import PipelineError
from pipeline.fsutil import LockHeld, UnsafeLockFile, file_lock

@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    # the run
    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.json"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    # fine-tuning
    @property
    def finetune(self) -> Path:
        return self.root / "finetune"

    @property
    def finetune_preset(self) -> Path:
        return self.finetune / "preset"

    @property
    def checkpoints(self) -> Path:
        return self.finetune / "checkpoints"

    # distillation
    @property
    def distill(self) -> Path:
        return self.root / "distill"

    @property
    def student_preset(self) -> Path:
        return self.distill / "preset"

    # export
    def export(self, target: str, student: bool = False) -> Path:
        """The folder of one exported model: export/text, export/student_litertlm, ..."""
        if target not in set(ExportTarget):
            raise ValueError(f"unknown export target {target!r}")
        return self.root / "export" / (("student_" if student else "") + target)

    def bundles(self) -> list[Path]:
        """The .litertlm bundles of this run, the teacher's first."""
        return sorted(self.export("litertlm").glob("*.litertlm")) + \
            sorted(self.export("litertlm", student=True).glob("*.litertlm"))

    @contextmanager
    def lock(self):
        """Holds `<parent>/.<name>.lock` while the block runs; refuses a second holder.

        The same lock a sweep of that name holds (`sweep.run`), so a run never works in a
        sweep's folder while the sweep runs. Race-free, never through a symbolic link
        (`fsutil.file_lock`); a crashed run never blocks the next one.
        """
        run = self.root.parent / self.root.name.removesuffix(".partial")
        with folder_lock(run):
            yield self


@contextmanager
def folder_lock(folder: Path, what: str = "a run"):
    """Holds the lock of run or sweep folder `folder` (`<parent>/.<name>.lock`), or a
    one-line PipelineError naming who holds it."""
    folder = Path(folder)
    writable_folder(folder.parent, "output_dir")
    path = folder.parent / f".{folder.name}.lock"
    try:
        with file_lock(path):
            yield
    except LockHeld as e:
        raise PipelineError(f"{folder} is in use by {what} still going "
                            f"({e.holder or 'another process'}); wait for it or choose "
                            f"another name") from None
    except UnsafeLockFile as e:
        raise PipelineError(f"{e}: remove it (a lock file must be a plain file)") from None


def cache_dir() -> Path:
    """The machine's cache, shared by runs: $GPT2_PIPELINE_CACHE, else <project>/.cache.
    Holds the embedded base presets (embedded-<key>/) and the token cache (tokens/)."""
    return Path(os.environ.get("GPT2_PIPELINE_CACHE", PROJECT_ROOT / ".cache")).expanduser()


def writable_folder(path, setting: str) -> Path:
    """Creates folder `path` if needed and proves it writable, else a one-line PipelineError."""
    path = Path(path)
    probe = path / f".write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a new file of our own: O_EXCL refuses an existing name, a symlink included
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise PipelineError(f"{setting}: cannot write to {path} ({reason}); choose a folder "
                            f"you can write to, e.g. --set {setting}=runs") from None
    return path
