"""One progress display for both trainers: a bar on a terminal, one line per RL step otherwise."""

from __future__ import annotations

import io
import types

from searchrl.training import StepProgressCallback


def state(step, max_steps=4):
    return types.SimpleNamespace(global_step=step, max_steps=max_steps, is_world_process_zero=True)


def test_without_a_terminal_each_step_logs_one_short_line():
    stream = io.StringIO()
    callback = StepProgressCallback("GRPO", interactive=False, stream=stream)
    callback.on_train_begin(None, state(1), None)  # resumed after step 1
    for step in (2, 3):
        callback.on_step_end(None, state(step), None)
        callback.on_log(None, state(step), None, logs={"loss": 0.01234, "reward": 0.5, "kl": 0.0})
    callback.on_log(None, state(3), None, logs={"train_runtime": 9.0})  # the summary is not a step
    callback.on_train_end(None, state(3), None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("GRPO step 2/4 · reward 0.500 · loss 0.0123 · ")
    assert " s/step · ETA " in lines[1] and lines[1].startswith("GRPO step 3/4")


def test_on_a_terminal_the_bar_advances_and_no_lines_are_written(monkeypatch):
    stream = io.StringIO()
    advanced = []
    callback = StepProgressCallback("co-augmentation", interactive=True, stream=stream)
    from contextlib import contextmanager

    import searchrl.progress as progress

    @contextmanager
    def fake_bar(description, total, unit="it", disable=None):
        advanced.append(("open", description, total))
        yield lambda n=1: advanced.append(n)

    monkeypatch.setattr(progress, "progress_bar", fake_bar)
    callback.on_train_begin(None, state(2), None)
    callback.on_step_end(None, state(3), None)
    callback.on_log(None, state(3), None, logs={"loss": 0.1})
    callback.on_train_end(None, state(3), None)
    assert advanced == [("open", "co-augmentation", 4), 2, 1] and stream.getvalue() == ""
