"""A sweep's summary: summary.csv, summary.md and summary.png, sorted by the sweep's metric."""

from __future__ import annotations

import csv
import io

from pipeline.fsutil import write_text
from pipeline.report import plot_lines
from pipeline.sweep.spec import Point, Sweep

def metric_value(metrics: dict, path: str):
    node = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def row(sweep: Sweep, point: Point) -> dict:
    """One summary row: the swept values, the metric, the numbers every run records."""
    m = point.metrics
    teacher = m.get("export", {}).get("teacher", {})
    text, bundle = teacher.get("text", {}), teacher.get("litertlm", {})
    checks = []
    if text.get("verification"):
        checks.append(f"text {text['verification'].get('matches')}/"
                      f"{text['verification'].get('prompts')}")
    if bundle.get("verification"):
        ppl = bundle["verification"].get("perplexity", {}).get("relative_difference")
        checks.append(f"litertlm {bundle['verification'].get('greedy_matches')}"
                      + (f", ppl {ppl:+.2%}" if ppl is not None else ""))
    seconds = metric_value(m, "run.stage_seconds.total") or point.seconds

    def num(path, scale=1.0):
        value = metric_value(m, path)
        return "" if value is None else round(value * scale, 4)

    out = {"point": point.name, **{k: point.values.get(k, "") for k in sweep.keys},
           "status": point.status, sweep.metric: num(sweep.metric),
           "val_ppl_before": num("finetune.before.val_perplexity"),
           "val_ppl_after": num("finetune.after.val_perplexity"),
           "student_ppl": num("distill.val_perplexity.student"),
           "baseline_ppl": num("distill.val_perplexity.baseline"),
           "text_mb": num("export.teacher.text.size_bytes", 1e-6),
           "litertlm_mb": num("export.teacher.litertlm.size_bytes", 1e-6),
           "verification": "; ".join(checks), "seconds": round(seconds),
           "error": point.error}
    return out


def sorted_rows(sweep: Sweep) -> list[dict]:
    rows = [row(sweep, p) for p in sweep.points if p.status != "pending"]
    sign = -1 if sweep.maximize else 1
    return sorted(rows, key=lambda r: (r[sweep.metric] == "", sign * (r[sweep.metric] or 0)))


def write_summary(sweep: Sweep) -> None:
    """Writes summary.csv, summary.md and summary.png into the sweep folder."""
    rows = sorted_rows(sweep)
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep.folder / "summary.csv", buffer.getvalue())
    order = "highest" if sweep.maximize else "lowest"
    lines = [f"# Sweep {sweep.name}", "", f"Sorted by `{sweep.metric}`, {order} first. "
             f"{sum(r['status'] == 'ok' for r in rows)} of {len(sweep.points)} points ok.", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in r.values()) + " |"
              for r in rows]
    write_text(sweep.folder / "summary.md", "\n".join(lines) + "\n")
    plot_summary(sweep, rows)


def plot_summary(sweep: Sweep, rows: list[dict]) -> None:
    """The metric against the first swept setting, one line per value of the others."""
    x_key, rest = sweep.keys[0], sweep.keys[1:]
    xs = list(dict.fromkeys(p.values.get(x_key) for p in sweep.points))
    lines = {}
    for r in rows:
        if r[sweep.metric] != "" and r[x_key] in xs:
            label = ", ".join(f"{k.split('.')[-1]}={r[k]}" for k in rest)
            lines.setdefault(label, []).append((xs.index(r[x_key]), r[sweep.metric]))
    plot_lines(xs, {k: sorted(v) for k, v in lines.items()}, x_key, sweep.metric,
               f"sweep {sweep.name}", sweep.folder / "summary.png")


