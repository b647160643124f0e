"""Resuming a run from its last complete checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from searchrl.runs import RunDirectory

log = logging.getLogger(__name__)


def train_with_resume(trainer, run: RunDirectory) -> Path | None:
    """``trainer.train()``, resuming from ``run``'s last complete checkpoint when there is one.

    Metrics logged after that checkpoint (by a run that was killed before its next save) are
    dropped first, so ``metrics.jsonl`` stays one consistent history. Returns the checkpoint
    resumed from, or ``None`` for a fresh start.
    """
    checkpoint = run.last_checkpoint()
    if checkpoint is not None:
        from searchrl.runs import checkpoint_step

        step = checkpoint_step(checkpoint) or 0
        _drop_metrics_after(run, step)
        log.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    return checkpoint


def _drop_metrics_after(run: RunDirectory, step: int) -> None:
    records = run.read_metrics()
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    if len(kept) != len(records):
        import json

        run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
