"""Training curves of one or more run directories as ``report.html`` plus the PNGs it shows.

Every quantity found in the runs' ``metrics.jsonl`` among those that say how training went gets
one panel, with all runs overlaid and told apart by a legend:

* **Reward**: the mean reward, and each reward term (co-augmentation: ``train/coaug/reward_query``,
  ``…_relevant_doc``, ``…_negative_doc``; agent: ``train/rewards/<term>/mean``);
* **Zero-std groups**: the fraction of GRPO groups whose rewards were all equal (they teach
  nothing), and the reward standard deviation;
* **Selection metric** (`dev/…` in `metrics.jsonl`, the evaluation that chooses `best/`): nDCG/recall/MRR@k, EM, F1, judge accuracy; the best checkpoint is starred;
  beside it the part of dev that chose nothing (`dev_report/…`) and, for the agent, a fixed sample
  of its training questions (`train_eval/…`: how well it fits what it trains on);
* **Expansion length / searches**: words per expansion, searches and retries per episode;
* **Step time**: seconds per optimiser step, seconds per rollout.

Beside each ``plots/<name>.png`` the numbers it shows are kept in ``plots/<name>.json``
(``{"key", "title", "section", "runs": {label: {"path", "steps", "values"}}}``), so a plot can be
checked against ``metrics.jsonl``. A step logged twice (a resumed run) shows its last value.

Example:

>>> import json, tempfile
>>> from pathlib import Path
>>> run = Path(tempfile.mkdtemp()) / "run"; run.mkdir()
>>> lines = [{"step": s, "train/reward": 0.1 * s, "train/step_time": 2.0} for s in (1, 2, 3)]
>>> _ = (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in lines))
>>> report = build_report([run])
>>> report.html.name, [plot.key for plot in report.plots]
('report.html', ['train/reward', 'train/step_time'])
>>> report.plots[0].series["run"].values
[0.1, 0.2, 0.30000000000000004]
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from searchrl.errors import DataError

METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class Quantity:
    """Metric keys matching ``pattern`` (a full-match regex) are plotted in ``section``.

    ``title`` is formatted with the pattern's groups, e.g. ``"reward: {0}"``.
    """

    section: str
    pattern: str
    title: str


#: What is plotted, in order. Keys match what the trainers log (see coaug/train.py, agent/train.py).
QUANTITIES: tuple[Quantity, ...] = (
    Quantity("Reward", r"train/reward", "mean reward"),
    Quantity("Reward", r"train/coaug/reward_(.+)", "reward: {0}"),
    Quantity("Reward", r"train/rewards/(.+)/mean", "reward term: {0}"),
    Quantity("Zero-std groups", r"train/frac_reward_zero_std", "fraction of groups with zero reward std"),
    Quantity("Zero-std groups", r"train/reward_std", "reward std"),
    # dev/... is the evaluation that chooses best/: part of dev, or held-out training queries (selection.json).
    Quantity("Selection metric", r"dev/(ndcg@\d+|recall@\d+|mrr@\d+|map|em|f1|judge)", "selection {0}"),
    # dev_report/...: the part of dev that chose nothing; train_eval/...: training questions (fit, not generalisation).
    Quantity("Selection metric", r"dev_report/(ndcg@\d+|recall@\d+|mrr@\d+|map|em|f1|judge)", "report part of dev: {0}"),
    Quantity("Selection metric", r"train_eval/(em|f1)", "training questions (fit): {0}"),
    # dev_greedy/...: with eval.samples, sampled episodes choose best/ and the greedy play is only shown.
    Quantity("Selection metric", r"dev_greedy/(em|f1)", "greedy {0} (selection part)"),
    Quantity("Expansion length / searches", r"train/coaug/expansion_words", "words per expansion (training)"),
    Quantity("Expansion length / searches", r"dev/(query|doc)_expansion_words", "words per {0} expansion (selection)"),
    Quantity("Expansion length / searches", r"rollout/searches_per_episode", "searches per episode (rollouts)"),
    Quantity("Expansion length / searches", r"rollout/retry_rate", "episodes with a retry (rollouts)"),
    Quantity("Expansion length / searches", r"dev/searches_per_episode", "searches per episode (selection)"),
    Quantity("Expansion length / searches", r"dev/retries_per_episode", "retries per episode (selection)"),
    Quantity("Step time", r"train/step_time", "seconds per optimiser step"),
    Quantity("Step time", r"rollout/seconds", "seconds per rollout"),
)


@dataclass
class Series:
    """One run's points of one metric, by step."""

    steps: list[int]
    values: list[float]


@dataclass
class Plot:
    """One panel: a metric ``key`` of every run that logged it."""

    name: str
    section: str
    title: str
    key: str
    series: dict[str, Series]
    png: Path
    data: Path
    best: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Run label -> (step, value) of its best checkpoint, when this is the metric it was picked by."""


@dataclass
class RunMetrics:
    """A run directory's records, read once."""

    label: str
    path: Path
    records: list[dict[str, Any]]
    best: dict[str, Any] | None


@dataclass
class Report:
    html: Path
    plots: list[Plot]
    runs: list[RunMetrics]


# --------------------------------------------------------------------------------------
# reading


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl`` (or a metrics file itself); a line cut by a kill is skipped."""
    path = Path(path)
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(
            "no metrics.jsonl here" if path.is_dir() else "run directory not found",
            path=path,
            hint="pass a training run directory (it holds metrics.jsonl once training has logged a step)",
        )
    records = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def metric_series(records: Sequence[Mapping[str, Any]], key: str) -> Series:
    """Finite numeric values of ``key`` by step, ascending; a step logged twice keeps its last value."""
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        by_step[int(record["step"])] = float(value)
    steps = sorted(by_step)
    return Series(steps, [by_step[s] for s in steps])


def _run_labels(paths: Sequence[Path]) -> list[str]:
    """Short, distinct legend labels: the folder name, with its parent when names repeat."""
    labels = [p.name or str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.name}" for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def load_runs(paths: Sequence[str | Path]) -> list[RunMetrics]:
    resolved = [Path(p).expanduser().resolve() for p in paths]
    if not resolved:
        raise DataError("no run directories given", hint="searchrl report RUN [RUN...]")
    runs = []
    for label, path in zip(_run_labels(resolved), resolved):
        records = read_metrics(path)
        best_file = path / "best.json"
        best = json.loads(best_file.read_text(encoding="utf-8")) if best_file.is_file() else None
        runs.append(RunMetrics(label, path, records, best))
    return runs


def _plotted_keys(runs: Sequence[RunMetrics]) -> list[tuple[Quantity, str, str]]:
    """``(quantity, key, title)`` for every key some run logged, in :data:`QUANTITIES` order."""
    keys = sorted({key for run in runs for record in run.records for key in record})
    found = []
    for quantity in QUANTITIES:
        pattern = re.compile(quantity.pattern)
        for key in keys:
            match = pattern.fullmatch(key)
            if match:
                found.append((quantity, key, quantity.title.format(*match.groups())))
    return found


# --------------------------------------------------------------------------------------
# writing


def _file_stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def _draw(plot: Plot) -> None:
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6.4, 3.4), dpi=100, layout="constrained")
    axes = figure.subplots()
    for label, series in plot.series.items():
        (line,) = axes.plot(series.steps, series.values, marker="o", markersize=3, linewidth=1.5, label=label)
        if label in plot.best:
            step, value = plot.best[label]
            axes.plot([step], [value], marker="*", markersize=12, color=line.get_color(), linestyle="none")
    axes.set_title(plot.title, fontsize=11)
    axes.set_xlabel("step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(plot.key, fontsize=8)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    tmp = plot.png.with_name(plot.png.name + ".tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, plot.png)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_report(runs: Sequence[str | Path], out: str | Path | None = None, *, title: str | None = None) -> Report:
    """Write ``OUT/report.html`` and ``OUT/plots/*.png`` (+ ``.json``) for ``runs``; returns what was drawn.

    ``out`` defaults to the run directory when there is one run; with several it is required.
    PNGs of an earlier build that are no longer drawn are removed from ``OUT/plots``.
    """
    loaded = load_runs(runs)
    if out is None:
        if len(loaded) > 1:
            raise DataError("several runs need an output folder", hint="pass --out DIR for the overlaid report")
        out = loaded[0].path
    out = Path(out).expanduser()
    plots_dir = out / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)

    plots: list[Plot] = []
    for quantity, key, plot_title in _plotted_keys(loaded):
        series = {run.label: metric_series(run.records, key) for run in loaded}
        series = {label: s for label, s in series.items() if s.steps}
        if not series:
            continue
        best = {}
        for run in loaded:
            if run.best and key == f"dev/{run.best.get('metric')}" and run.label in series:
                best[run.label] = (int(run.best["step"]), float(run.best["value"]))
        stem = _file_stem(key)
        plot = Plot(stem, quantity.section, plot_title, key, series, plots_dir / f"{stem}.png", plots_dir / f"{stem}.json", best)
        _draw(plot)
        paths = {run.label: str(run.path) for run in loaded}
        record = {
            "key": key, "title": plot_title, "section": quantity.section,
            "runs": {label: {"path": paths[label], "steps": s.steps, "values": s.values} for label, s in series.items()},
        }
        _write_text(plot.data, json.dumps(record, indent=1) + "\n")
        plots.append(plot)

    drawn = {p.png.name for p in plots} | {p.data.name for p in plots}
    for stale in plots_dir.iterdir():
        if stale.suffix in (".png", ".json") and stale.name not in drawn:
            stale.unlink()

    html_path = out / REPORT_FILE
    _write_text(html_path, _render_html(loaded, plots, out, title))
    return Report(html_path, plots, loaded)


# --------------------------------------------------------------------------------------
# HTML


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: .9rem; } td, th { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; } figure img { width: 640px; max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .8rem; color: #555; } code { font-size: .85em; } .muted { color: #777; }
"""


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _render_html(runs: Sequence[RunMetrics], plots: Sequence[Plot], out: Path, title: str | None) -> str:
    e = html.escape
    title = title or ("Training run: " + runs[0].label if len(runs) == 1 else "Training runs: " + ", ".join(r.label for r in runs))
    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
        f'<p class="muted">Written {e(written)} by <code>searchrl report</code> from each run\'s metrics.jsonl.</p>',
        "<table><tr><th>run</th><th>directory</th><th>last step</th><th>records</th><th>best checkpoint</th></tr>",
    ]
    for run in runs:
        last = max((int(r["step"]) for r in run.records), default=None)
        best = run.best
        best_text = f"{best['metric']} = {_format(best.get('value'))} at step {best.get('step')}" if best else "-"
        parts.append(
            f"<tr><td>{e(run.label)}</td><td><code>{e(str(run.path))}</code></td><td>{_format(last)}</td>"
            f"<td>{len(run.records)}</td><td>{e(best_text)}</td></tr>"
        )
    parts.append("</table>")
    if not plots:
        parts.append('<p class="muted">Nothing to plot yet: no reward, dev, expansion, search or step-time metrics logged.</p>')
    for section in dict.fromkeys(p.section for p in plots):
        parts += [f"<h2>{e(section)}</h2>", '<div class="grid">']
        for plot in (p for p in plots if p.section == section):
            last_values = ", ".join(f"{label}: {_format(s.values[-1])} (step {s.steps[-1]})" for label, s in plot.series.items())
            src = os.path.relpath(plot.png, out)
            data = os.path.relpath(plot.data, out)
            parts.append(
                f'<figure><img src="{e(src)}" alt="{e(plot.title)}">'
                f"<figcaption><code>{e(plot.key)}</code> — last: {e(last_values)} · "
                f'<a href="{e(data)}">data</a></figcaption></figure>'
            )
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


__all__ = ["QUANTITIES", "Plot", "Quantity", "Report", "RunMetrics", "Series", "build_report", "load_runs",
           "metric_series", "read_metrics"]
