"""The sweep file: base config, fixed overrides, a grid or list of points, the metric.

Example sweep file (README: Sweeps):
    name: lr-lora
    config: ../tiny.yaml                  # relative to this file; optional
    overrides: {export: {enabled: false}}  # same keys as a config file; optional
    grid:
      finetune.learning_rate: [3.0e-4, 1.0e-3]
      finetune.lora_rank: [0, 8]
    metric: finetune.after.val_perplexity   # a path in metrics.json; lower is better
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import config as config_lib
from pipeline.errors import ConfigError
from pipeline.overrides import read_yaml
from pipeline.report import read_metrics
from pipeline.run_folder import RunFolder

SWEEP_KEYS = ("name", "config", "overrides", "grid", "points", "metric", "maximize")
METRIC_SECTIONS = ("finetune", "distill", "export", "run")


@dataclass
class Point:
    name: str
    values: dict  # dotted key -> value
    status: str = "pending"  # ok, failed, interrupted
    error: str = ""
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)


@dataclass
class Sweep:
    name: str
    folder: Path
    base: dict  # the config file's settings with the fixed overrides merged in
    keys: list
    points: list
    metric: str
    maximize: bool


def nested(dotted: dict) -> dict:
    """Turns {"finetune.epochs": 1} into {"finetune": {"epochs": 1}}."""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def merged(base: dict, extra: dict) -> dict:
    """Returns `base` with the nested mapping `extra` merged in (extra wins)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_key(key, where: str) -> None:
    """Raises ConfigError unless `key` ("finetune.learning_rate") names one config setting."""
    node = config_lib.RunConfig()
    for part in str(key).split("."):
        names = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
        if part not in names:
            raise ConfigError(f"{where} {key}: unknown key (a setting such as "
                              "finetune.learning_rate; README: Config reference)")
        node = getattr(node, part)
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"{where} {key}: names a whole section; sweep one setting in it")
    if key in ("name", "output_dir"):
        raise ConfigError(f"{where} {key}: the sweep sets it for each point")


def point_name(values: dict) -> str:
    """A folder name from the swept values, e.g. learning_rate-0.001_lora_rank-8."""
    leaves = [k.split(".")[-1] for k in values]
    parts = []
    for key, value in values.items():
        label = key.split(".")[-1] if leaves.count(key.split(".")[-1]) == 1 else key
        shown = format(value, "g") if isinstance(value, float) else str(value)
        parts.append(f"{label}-{shown}")
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(parts))[:120]


def grid_points(spec: dict, where: str) -> list[dict]:
    """Returns the swept values of every point: a grid's combinations or the listed points."""
    if ("grid" in spec) == ("points" in spec):
        raise ConfigError(f"{where} give either grid: (every combination) or points: (a list)")
    if "grid" in spec:
        grid = spec["grid"]
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(f"{where} grid: empty; give settings with lists of values, "
                              "e.g. finetune.learning_rate: [3.0e-4, 1.0e-3]")
        for key, values in grid.items():
            check_key(key, f"{where} grid:")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where} grid: {key}: expected a non-empty list of values, "
                                  f"got {values!r}")
        keys = list(grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())]
    points = spec["points"]
    if not isinstance(points, list) or not points or not all(isinstance(p, dict) and p
                                                             for p in points):
        raise ConfigError(f"{where} points: expected a non-empty list of mappings of settings")
    for p in points:
        for key in p:
            check_key(key, f"{where} points:")
    return points


def load_sweep(path) -> Sweep:
    """Reads and checks a sweep file; raises ConfigError naming the first problem."""
    path = Path(path)
    spec = read_yaml(path)
    where = f"{path}:"
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{where} {unknown[0]}: unknown key (known keys: "
                          f"{', '.join(SWEEP_KEYS)})")
    base: dict = {}
    if spec.get("config"):
        if not isinstance(spec["config"], str):
            raise ConfigError(f"{where} config: expected the path of a config file, got "
                              f"{spec['config']!r}")
        base = read_yaml(path.parent / spec["config"])
    fixed = spec.get("overrides") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where} overrides: expected a mapping of settings")
    base = merged(base, fixed)
    base_cfg = config_lib.load_config(None, base)  # the base itself must be a valid config
    values = grid_points(spec, where)
    metric = spec.get("metric", "finetune.after.val_perplexity")
    if not isinstance(metric, str) or metric.split(".")[0] not in METRIC_SECTIONS:
        raise ConfigError(f"{where} metric: {metric!r} must be a path in metrics.json starting "
                          f"with one of {', '.join(METRIC_SECTIONS)}")
    if not isinstance(spec.get("maximize", False), bool):
        raise ConfigError(f"{where} maximize: expected true or false")
    name = spec.get("name") or path.stem
    config_lib.validate(config_lib.RunConfig(name=str(name)))  # a plain folder name
    keys = list(dict.fromkeys(k for v in values for k in v))
    for v in values:  # every point's settings have the right types before the first runs
        try:  # (an impossible value, e.g. a negative rate, fails its own point: recorded)
            config_lib.apply_overrides(config_lib.RunConfig(), merged(base, nested(v)),
                                       "overrides:")
        except ConfigError as e:
            detail = str(e).removeprefix("overrides: ")
            raise ConfigError(f"{where} the point {point_name(v)}: {detail}") from None
    points = [Point(point_name(v), v) for v in values]
    seen: dict = {}
    for p in points:  # distinct folder names even if two points format alike
        seen[p.name] = seen.get(p.name, 0) + 1
        if seen[p.name] > 1:
            p.name = f"{p.name}_{seen[p.name]}"
    folder = Path(base_cfg.output_dir).absolute() / str(name)
    return Sweep(str(name), folder, base, keys, points, metric, spec.get("maximize", False))


def point_config(sweep: Sweep, point: Point) -> dict:
    """The whole override mapping one point runs with."""
    return merged(sweep.base, nested({**point.values, "output_dir": str(sweep.folder),
                                      "name": point.name}))


def finished(sweep: Sweep, point: Point) -> bool:
    """True when the point's run folder is complete and was made by the same config."""
    run = RunFolder(sweep.folder / point.name)
    if "run" not in read_metrics(run.root) or not run.config_file.is_file():
        return False
    cfg = config_lib.absolute_paths(config_lib.load_config(None, point_config(sweep, point)))
    return run.config_file.read_text() == config_lib.dump_yaml(cfg)


