"""Run reports: report.html and PNG plots built from metrics.jsonl, one run or several overlaid."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from searchrl.cli import main
from searchrl.errors import DataError
from searchrl.report import build_report
from searchrl.runs import RunDirectory

# Keys as the trainers log them (coaug/train.py, agent/train.py, training.py's callbacks).
COAUG_STEP_KEYS = ("train/reward", "train/reward_std", "train/frac_reward_zero_std", "train/coaug/reward_query",
                   "train/coaug/reward_relevant_doc", "train/coaug/reward_negative_doc",
                   "train/coaug/expansion_words", "train/step_time")
COAUG_PLOTTED = {*COAUG_STEP_KEYS, "dev/ndcg@10", "dev/recall@10", "dev/query_expansion_words"}
AGENT_PLOTTED = {"train/reward", "train/rewards/retry_reward/mean", "train/rewards/correctness_reward/mean",
                 "train/frac_reward_zero_std", "rollout/searches_per_episode", "rollout/seconds", "dev/f1", "dev/em",
                 "dev_report/f1", "train_eval/f1", "train/step_time"}

# The default colours of the first two lines in a matplotlib figure (C0, C1).
BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)


def coaug_records(seed: int, steps: int = 6, keys: tuple[str, ...] = COAUG_STEP_KEYS) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = [{"step": 0, "time": "t", "dev/ndcg@10": 0.30 + seed / 100, "dev/recall@10": 0.5,
                "dev/query_expansion_words": 0.0}]
    for step in range(1, steps + 1):
        record = {"step": step, "time": "t", "train/loss": 0.01}
        record.update({key: float(rng.random()) for key in keys})
        records.append(record)
        if step % 3 == 0:
            records.append({"step": step, "time": "t", "dev/ndcg@10": float(rng.random()), "dev/recall@10": 0.6,
                            "dev/query_expansion_words": 7.5})
    return records


def write_run(directory: Path, records: list[dict], *, tail: str = "", best: dict | None = None) -> Path:
    directory.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (directory / "metrics.jsonl").write_text(text, encoding="utf-8")
    if best is not None:
        (directory / "best.json").write_text(json.dumps(best), encoding="utf-8")
    return directory


def expected_series(metrics_file: Path, key: str) -> tuple[list[int], list[float]]:
    """What a plot of ``key`` must show, read straight from metrics.jsonl: finite numbers, last value per step."""
    by_step: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            by_step[record["step"]] = value
    return sorted(by_step), [by_step[s] for s in sorted(by_step)]


def has_colour(png: Path, rgb: tuple[int, int, int]) -> bool:
    from matplotlib.image import imread

    pixels = (imread(png)[..., :3] * 255).round().astype(int)
    return bool((np.abs(pixels - np.array(rgb)).sum(axis=-1) <= 6).sum() > 20)


def test_report_plots_hold_exactly_the_logged_values(tmp_path):
    records = coaug_records(0)
    records[3]["train/reward"] = float("nan")  # a NaN is left out, not plotted as 0
    records[4]["train/step_time"] = "slow"  # not a number
    records.append({"step": 2, "time": "t", "train/reward": 0.99})  # step 2 logged again after a resume
    run = write_run(tmp_path / "run", records, tail='{"step": 7, "train/rew', best={"metric": "ndcg@10", "value": 0.9, "step": 3})

    report = build_report([run])

    assert report.html == run / "report.html"
    assert {plot.key for plot in report.plots} == COAUG_PLOTTED  # train/loss is not a panel
    page = report.html.read_text()
    for plot in report.plots:
        assert plot.png.is_file() and plot.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.png.stat().st_size > 5000
        assert has_colour(plot.png, BLUE), f"no line drawn in {plot.png}"
        assert f'src="plots/{plot.png.name}"' in page
        data = json.loads(plot.data.read_text())
        steps, values = expected_series(run / "metrics.jsonl", plot.key)
        assert data["key"] == plot.key and data["runs"]["run"]["steps"] == steps and data["runs"]["run"]["values"] == values
        assert (plot.series["run"].steps, plot.series["run"].values) == (steps, values)
    reward = next(p for p in report.plots if p.key == "train/reward").series["run"]
    assert 3 not in reward.steps and reward.values[reward.steps.index(2)] == 0.99
    assert next(p for p in report.plots if p.key == "dev/ndcg@10").best == {"run": (3, 0.9)}
    assert "ndcg@10 = 0.9 at step 3" in page


def test_several_runs_are_overlaid_with_a_legend(tmp_path):
    retry = write_run(tmp_path / "retry", coaug_records(1))
    no_retry = write_run(tmp_path / "no-retry", coaug_records(2, steps=4))

    report = build_report([retry, no_retry], tmp_path / "compare")

    assert report.html == tmp_path / "compare" / "report.html"
    reward = next(p for p in report.plots if p.key == "train/reward")
    assert sorted(reward.series) == ["no-retry", "retry"]
    data = json.loads(reward.data.read_text())["runs"]
    assert data["retry"]["steps"] == [1, 2, 3, 4, 5, 6] and data["no-retry"]["steps"] == [1, 2, 3, 4]
    assert data["no-retry"]["values"] == expected_series(no_retry / "metrics.jsonl", "train/reward")[1]
    assert has_colour(reward.png, BLUE) and has_colour(reward.png, ORANGE)
    page = report.html.read_text()
    assert str(retry) in page and str(no_retry) in page


def test_agent_run_keys_are_plotted(tmp_path):
    records = [{"step": 0, "dev/f1": 0.1, "dev/em": 0.0, "sft/loss_last": 2.0, "dev_report/f1": 0.2,
                "train_eval/f1": 0.3, "train_eval/num_questions": 20}]
    for step in (1, 2, 3):
        records.append({"step": step, "rollout/searches_per_episode": step / 2, "rollout/seconds": 3.0})
        records.append({"step": step, "train/reward": 0.2 * step, "train/rewards/retry_reward/mean": 0.1,
                        "train/rewards/correctness_reward/mean": 0.3, "train/rewards/retry_reward/std": 0.0,
                        "train/frac_reward_zero_std": 0.5, "train/step_time": 4.0})
    records.append({"step": 3, "dev/f1": 0.4, "dev/em": 0.25})
    run = write_run(tmp_path / "agent", records)
    report = build_report([run])
    assert {p.key for p in report.plots} == AGENT_PLOTTED
    sections = {p.key: p.section for p in report.plots}
    assert sections["rollout/searches_per_episode"] == "Expansion length / searches"
    assert sections["train/rewards/retry_reward/mean"] == "Reward"
    assert sections["dev_report/f1"] == sections["train_eval/f1"] == "Selection metric"  # beside dev/f1


def test_rebuild_drops_plots_no_longer_drawn(tmp_path):
    records = [{"step": step, "train/reward": 0.1, "train/step_time": 2.0} for step in (1, 2)]
    run = write_run(tmp_path / "run", records)
    build_report([run])
    assert (run / "plots" / "train_step_time.png").exists()
    for record in records:
        record.pop("train/step_time")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    build_report([run])
    assert not (run / "plots" / "train_step_time.png").exists()
    assert not (run / "plots" / "train_step_time.json").exists()
    assert (run / "plots" / "train_reward.png").exists()


def test_run_directory_report_includes_report_html(tmp_path):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"lr": 1e-5})
    for step in (1, 2):
        run.log_metrics(step, {"reward": 0.1 * step, "frac_reward_zero_std": 0.5}, prefix="train/")
    run.write_report("test run")
    run.close()
    assert (run.path / "report.md").is_file()
    html = (run.path / "report.html").read_text()
    assert "plots/train_reward.png" in html and (run.path / "plots" / "train_reward.png").stat().st_size > 0
    # a run that has logged nothing yet gets report.md only, without a warning
    empty = RunDirectory.create_or_resume(tmp_path / "empty", {"lr": 1e-5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty.write_report("nothing yet")
    assert not (empty.path / "report.html").exists()


def test_report_errors(tmp_path):
    run = write_run(tmp_path / "a", coaug_records(0))
    with pytest.raises(DataError, match="--out"):
        build_report([run, run])
    with pytest.raises(DataError, match="no metrics.jsonl"):
        build_report([tmp_path])
    with pytest.raises(DataError, match="not found"):
        build_report([tmp_path / "missing"])


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_report(tmp_path, capsys):
    keys = ("train/reward", "train/step_time")
    first = write_run(tmp_path / "first", coaug_records(0, keys=keys))
    second = write_run(tmp_path / "second", coaug_records(3, keys=keys))
    code, out, err = run_cli(capsys, "report", first, second, "--out", tmp_path / "both", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["report"] == str(tmp_path / "both" / "report.html") and Path(result["report"]).is_file()
    assert {p["key"] for p in result["plots"]} == {*keys, "dev/ndcg@10", "dev/recall@10", "dev/query_expansion_words"}
    assert all(p["runs"] == ["first", "second"] for p in result["plots"])

    code, out, err = run_cli(capsys, "report", first)
    assert code == 0 and out.strip() == str(first / "report.html")

    code, out, err = run_cli(capsys, "report", first, second)
    assert code == 2 and "--out" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, "report", tmp_path / "nowhere")
    assert code == 2 and "run directory not found" in err
