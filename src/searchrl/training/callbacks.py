"""Trainer callbacks both trainers use: metrics into the run, progress, dev evaluation, limits."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from transformers import TrainerCallback

from searchrl.errors import ConfigError
from searchrl.runs import RunDirectory
from searchrl.training.policy import save_policy

log = logging.getLogger(__name__)


class RunLoggingCallback(TrainerCallback):
    """Copy every trainer log (``loss``, ``reward``, ``kl``, ``clip_ratio/…``) into the run's metrics."""

    def __init__(self, run: RunDirectory) -> None:
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numbers:
                self.run.log_metrics(state.global_step, numbers, prefix="train/")


class StepProgressCallback(TrainerCallback):
    """Progress over RL steps on stderr, instead of transformers' log printing.

    On a terminal: a bar with the rate and an ETA. Otherwise (a log file, CI, ``nohup``): one
    short line per step — ``GRPO step 5/40 · reward 0.313 · loss 0.0004 · 28 s/step · ETA 16 min``
    — so a long job's log stays readable. ``SEARCHRL_PROGRESS=1`` forces the bar. Use with
    :func:`quiet_trainer`, which removes the printer that would dump every log dict to stdout.
    """

    def __init__(self, description: str = "training", *, interactive: bool | None = None, stream: Any = None) -> None:
        import os
        import sys

        self.description = description
        if interactive is None:
            interactive = sys.stderr.isatty() or os.environ.get("SEARCHRL_PROGRESS") == "1"
        self.interactive = interactive
        self.stream = stream
        self._stack = None
        self._advance = None
        self._started: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        import time
        from contextlib import ExitStack

        from searchrl.progress import progress_bar

        if not state.is_world_process_zero:
            return
        self._started = (time.perf_counter(), int(state.global_step))
        if not self.interactive:
            return
        self._stack = ExitStack()
        self._advance = self._stack.enter_context(
            progress_bar(self.description, total=state.max_steps, unit="step", disable=False)
        )
        if state.global_step:
            self._advance(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self._advance is not None:
            self._advance(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.interactive or not state.is_world_process_zero or not logs or self._started is None:
            return
        if "loss" not in logs and "reward" not in logs:
            return  # the end-of-training summary, not a step
        self._write(self.step_line(state.global_step, state.max_steps, logs))

    def step_line(self, step: int, max_steps: int, logs: Mapping[str, Any], *, now: float | None = None) -> str:
        """The one line written for ``step`` (see the class docstring).

        >>> callback = StepProgressCallback("GRPO", interactive=False)
        >>> callback._started = (0.0, 0)
        >>> callback.step_line(5, 40, {"reward": 0.3132, "loss": 0.0004}, now=140.0)
        'GRPO step 5/40 · reward 0.313 · loss 0.0004 · 28 s/step · ETA 16 min'
        """
        import time

        parts = [f"{self.description} step {step}/{max_steps}"]
        for key, label, digits in (("reward", "reward", 3), ("loss", "loss", 4)):
            value = logs.get(key)
            if isinstance(value, (int, float)):
                parts.append(f"{label} {value:.{digits}f}")
        started, first_step = self._started or (time.perf_counter(), step)
        done = step - first_step
        if done > 0:
            per_step = ((time.perf_counter() if now is None else now) - started) / done
            parts.append(f"{per_step:.0f} s/step")
            remaining = per_step * max(max_steps - step, 0)
            parts.append(f"ETA {remaining / 60:.0f} min" if remaining >= 60 else f"ETA {remaining:.0f} s")
        return " · ".join(parts)

    def _write(self, line: str) -> None:
        import sys

        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self._stack is not None:
            self._stack.close()
            self._stack = self._advance = None


def quiet_trainer(trainer, description: str = "training"):
    """Swap transformers' stdout log printer / tqdm bar for :class:`StepProgressCallback`; returns ``trainer``.

    Metrics still reach ``metrics.jsonl`` through :class:`RunLoggingCallback`, and stdout stays
    free for a command's result.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StepProgressCallback(description))
    return trainer


class DevEvaluationCallback(TrainerCallback):
    """Every ``every`` optimiser steps: ``metrics = evaluate(model, tokenizer, step)``, log, keep the best.

    ``metric`` names the key of the returned dict that decides the best checkpoint (higher is
    better unless ``higher_is_better=False``). The best policy is saved to ``run.best_dir`` with
    ``best.json`` recording metric, value and step. With ``patience`` set, training stops after
    that many consecutive evaluations without improvement; the count is rebuilt from
    ``metrics.jsonl`` on resume, so a kill does not reset it. ``evaluate_at_start`` also evaluates
    the untrained policy at step 0 (a baseline; never saved as best unless nothing beats it).
    ``min_delta``: a checkpoint must beat the best so far by more than this to replace it (and to
    count as an improvement for ``patience``).
    """

    def __init__(
        self,
        run: RunDirectory,
        evaluate: Callable[[Any, Any, int], Mapping[str, float]],
        *,
        metric: str,
        every: int,
        patience: int | None = None,
        higher_is_better: bool = True,
        evaluate_at_start: bool = True,
        evaluate_at_end: bool = True,
        prefix: str = "dev/",
        min_delta: float = 0.0,
    ) -> None:
        if every < 1:
            raise ConfigError("eval_every must be at least 1")
        if min_delta < 0:
            raise ConfigError(f"min_delta must be 0 or more (got {min_delta})")
        self.run = run
        self.evaluate = evaluate
        self.metric = metric
        self.every = every
        self.patience = patience
        self.higher_is_better = higher_is_better
        self.evaluate_at_start = evaluate_at_start
        self.evaluate_at_end = evaluate_at_end
        self.prefix = prefix
        self.min_delta = min_delta
        self.last_evaluated_step: int | None = None

    # -- state rebuilt from disk ---------------------------------------------------------
    def _evaluations(self) -> list[tuple[int, float]]:
        key = self.prefix + self.metric
        return [(int(r["step"]), float(r[key])) for r in self.run.read_metrics() if key in r]

    def evaluations_without_improvement(self) -> int:
        """Evaluations logged after the best one (what ``patience`` is compared with)."""
        best = self.run.best()
        if best is None:
            return 0
        return sum(1 for step, _ in self._evaluations() if step > best["step"])

    # -- the evaluation ------------------------------------------------------------------
    def _run_evaluation(self, state, model, tokenizer) -> None:
        step = int(state.global_step)
        if self.last_evaluated_step == step or not state.is_world_process_zero:
            return
        self.last_evaluated_step = step
        was_training = model.training
        model.eval()
        try:
            metrics = dict(self.evaluate(model, tokenizer, step))
        finally:
            if was_training:
                model.train()
        if self.metric not in metrics:
            raise ConfigError(
                f"dev evaluation returned no {self.metric!r} (got {sorted(metrics)})",
                hint="the evaluation function must return the metric used to pick the best checkpoint",
            )
        self.run.log_metrics(step, metrics, prefix=self.prefix)
        improved = self.run.update_best(
            step,
            self.metric,
            float(metrics[self.metric]),
            save=lambda directory: save_policy(model, tokenizer, directory),
            higher_is_better=self.higher_is_better,
            min_delta=self.min_delta,
        )
        log.info("step %d: %s=%.4f%s", step, self.metric, metrics[self.metric], " (best)" if improved else "")

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.evaluate_at_start and state.global_step == 0 and not self._evaluations():
            self._run_evaluation(state, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step > 0 and state.global_step % self.every == 0:
            self._run_evaluation(state, model, processing_class)
            if self.patience is not None and self.evaluations_without_improvement() >= self.patience:
                log.info("early stop: %d evaluations without improvement", self.patience)
                control.should_training_stop = True
                control.should_save = True
        return control

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.evaluate_at_end and state.global_step > 0:
            evaluated = {step for step, _ in self._evaluations()}
            if state.global_step not in evaluated:
                self._run_evaluation(state, model, processing_class)


class TimeLimitCallback(TrainerCallback):
    """Stop training, with a checkpoint, after the step that crosses a wall-time budget."""

    def __init__(self, seconds: float) -> None:
        import time

        self.seconds = seconds
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        import time

        if time.perf_counter() - self.started >= self.seconds:
            log.info("time budget of %.0f s reached at step %d", self.seconds, state.global_step)
            control.should_training_stop = True
            control.should_save = True
        return control


class ReleaseMemoryCallback(TrainerCallback):
    """After every RL step, return the heap memory freed during it to the OS (see :mod:`searchrl.memory`)."""

    def on_step_end(self, args, state, control, **kwargs):
        from searchrl.memory import release_freed_memory

        release_freed_memory()
        return control
