"""Run directories: everything needed to reproduce, inspect and resume one training run.

A run is a directory::

    RUN/
      config.yaml        the resolved configuration (after YAML + ``--set`` overrides)
      inputs.json        sha256 of every input file (data files, streamed)
      environment.json   searchrl / Python / key library versions, and the machine (CPU, bf16, GPUs)
      metrics.jsonl      one JSON object per logged step: {"step", "time", ...metrics}
      tb/                TensorBoard event files (the same metrics)
      checkpoints/       trainer checkpoints (``checkpoint-<step>/``), used to resume
      best/              the best checkpoint so far (e.g. a LoRA adapter folder), with its own best.json
      best.json          {"metric", "value", "step"} of ``best/``
      report.md          a human-readable summary
      report.html        training curves, plots/*.png and the numbers behind them (searchrl.report)

``RunDirectory.create_or_resume(path, config)`` creates a new run, or reopens an existing one
after checking that its configuration and inputs are the same (``force=True`` overrides).

Example:

>>> import tempfile
>>> run = RunDirectory.create_or_resume(tempfile.mkdtemp() + "/run", {"lr": 1e-5, "steps": 10})
>>> run.log_metrics(1, {"loss": 0.5})
>>> run.read_metrics()[0]["loss"]
0.5
>>> run.update_best(1, "dev_ndcg@10", 0.3)
True
>>> run.best()["value"]
0.3
>>> run.close()
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from searchrl.data.io import atomic_write_text, fsync_path
from searchrl.errors import ConfigError, DataError

MIN_DELTA_HELP = (
    "a checkpoint replaces best/ (at first the policy before RL) only when its selection score beats it by more "
    "than this: set it to the score's own noise, so that best/ moves on evidence rather than on a lucky evaluation"
)
"""The ``eval.min_delta`` setting of both trainers (:meth:`RunDirectory.update_best`)."""

#: Libraries whose versions are recorded in ``environment.json``.
TRACKED_LIBRARIES = (
    "searchrl", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm",
    "sentence-transformers", "bm25s", "numpy", "scipy", "pydantic",
)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# --------------------------------------------------------------------------------------
# helpers usable on their own
# --------------------------------------------------------------------------------------


def sha256_file(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (never the whole file in memory)."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(chunk_size), b""):
                digest.update(chunk)
    except OSError as err:
        raise DataError(f"cannot read input file: {err.strerror}", path=path) from None
    return digest.hexdigest()


def hash_inputs(files: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """``{absolute path: {"sha256", "bytes"}}`` for each file; directories are walked (sorted)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in files:
        entry = Path(entry).expanduser().resolve()
        if not entry.exists():
            raise DataError("input file not found", path=entry, hint="check the data paths in the config")
        members = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
        for member in members:
            out[str(member)] = {"sha256": sha256_file(member), "bytes": member.stat().st_size}
    return out


def machine_info() -> dict[str, Any]:
    """The machine a run ran on: the CPU's model and cores, whether it multiplies bf16 natively, the GPUs.

    ``precision: auto`` runs in bf16 only where the CPU (or GPU) has bf16 instructions, and greedy
    generation in bf16 and in fp32 — or in bf16 on two kinds of CPU — can pick different tokens,
    so two runs of one config on two machines are compared knowing this.
    """
    from searchrl.llm.precision import cpu_has_native_bf16

    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model in /proc/cpuinfo; platform.processor() often says only "x86_64"
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "cpu_native_bf16": cpu_has_native_bf16(), "gpus": gpus}


def library_versions(names: Sequence[str] = TRACKED_LIBRARIES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when not installed), plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def config_to_dict(config: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """A plain, YAML/JSON-safe dict of a pydantic config or a mapping."""
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json")
    return json.loads(json.dumps(dict(config), default=str))


# Where a run lives is not part of what it computes: a run directory that was moved or copied
# resumes (and a finished one is reused) under its new path.
LOCATION_KEYS = frozenset({"output_dir"})


def stored_config(path: str | Path, config: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The configuration stored at ``path`` (a ``config.yaml``), as ``config``'s model reads it today.

    A key the file lacks — one added to the model after the run was written — takes the model's
    default, so a run stays resumable across versions that only add settings (their defaults keep
    the old behaviour). Every key the file holds keeps its stored value; a file the model no longer
    reads (a renamed key) is returned as stored, and the comparison then names the difference.
    """
    stored = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(config, BaseModel) or not isinstance(stored, dict):
        return stored
    try:
        defaults = config_to_dict(type(config).model_validate(stored))
    except (ValueError, TypeError):
        return stored
    return _fill_missing(stored, defaults)


def _fill_missing(stored: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    filled = dict(defaults)
    for key, value in stored.items():
        default = defaults.get(key)
        both_sections = isinstance(value, Mapping) and isinstance(default, Mapping)
        filled[key] = _fill_missing(value, default) if both_sections else value
    return filled


def finished_run_of(path: str | Path, config: BaseModel | Mapping[str, Any]) -> bool:
    """Whether ``path`` holds a finished run (``final/`` written) whose stored configuration is ``config``.

    The recipes skip training only then; any other stored configuration goes back to training, which
    refuses it by name (or continues it, for a key that may change such as the step count).
    """
    path = Path(path)
    stored = path / RunDirectory.CONFIG
    if not (path / "final").is_dir() or not stored.is_file():
        return False
    return not config_differences(stored_config(stored, config), config_to_dict(config)).keys() - LOCATION_KEYS


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ: ``{"train.lr": (old, new)}`` (missing keys show as ``None``)."""
    a, b = _flatten(old), _flatten(new)
    return {key: (a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name, else ``None``."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def last_checkpoint(directory: str | Path) -> Path | None:
    """The complete ``checkpoint-<step>`` folder with the highest step in ``directory``, if any.

    A folder counts as complete when it holds ``trainer_state.json`` (written last by the
    trainer), so a checkpoint cut short by a kill is skipped rather than resumed from.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    complete = [
        (checkpoint_step(p), p)
        for p in directory.iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and (p / "trainer_state.json").exists()
    ]
    return max(complete)[1] if complete else None


# --------------------------------------------------------------------------------------
# the run directory
# --------------------------------------------------------------------------------------


class RunDirectory:
    """One training run on disk; see the module docstring for the layout.

    Create with :meth:`create_or_resume`. ``resumed`` tells whether the directory already
    existed with the same configuration.
    """

    CONFIG = "config.yaml"
    INPUTS = "inputs.json"
    ENVIRONMENT = "environment.json"
    METRICS = "metrics.jsonl"
    BEST_JSON = "best.json"
    REPORT = "report.md"

    def __init__(self, path: str | Path, *, resumed: bool = False) -> None:
        self.path = Path(path)
        self.resumed = resumed
        self._tb_writer = None
        self._tb_failed = False
        self._wandb = None

    # -- layout -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def tb_dir(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_dir(self) -> Path:
        return self.path / "best"

    @property
    def best_json_path(self) -> Path:
        return self.path / self.BEST_JSON

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    # -- creation -----------------------------------------------------------------------
    @classmethod
    def create_or_resume(
        cls,
        path: str | Path,
        config: BaseModel | Mapping[str, Any],
        *,
        input_files: Iterable[str | Path] = (),
        force: bool = False,
        mutable_keys: Iterable[str] = (),
    ) -> "RunDirectory":
        """Open ``path`` as a run of ``config``: create it, or resume it if it holds the same config.

        Resuming with a different configuration raises :class:`ConfigError` naming every
        differing key, unless ``force`` (then the new config replaces the old one and the change
        is noted in ``config-history.jsonl``). Keys in ``mutable_keys`` (dotted, e.g. ``"steps"``
        to extend a finished run) may change without ``force``, and so may ``output_dir``: a run
        directory moved or copied elsewhere resumes there. Input files whose sha256 changed are
        refused the same way.
        """
        path = Path(path).expanduser()
        new_config = config_to_dict(config)
        inputs = hash_inputs(input_files)
        run = cls(path)
        if path.exists() and not path.is_dir():
            raise ConfigError("run path exists and is not a directory", path=path, hint="choose another --out")
        if run.config_path.exists():
            old_config = stored_config(run.config_path, config)
            mutable = set(mutable_keys) | LOCATION_KEYS
            differences = config_differences(old_config, new_config)
            blocking = {k: v for k, v in differences.items() if k not in mutable}
            old_inputs = json.loads((path / cls.INPUTS).read_text()) if (path / cls.INPUTS).exists() else {}
            changed_inputs = sorted(
                name for name in set(old_inputs) & set(inputs) if old_inputs[name]["sha256"] != inputs[name]["sha256"]
            )
            if (blocking or changed_inputs) and not force:
                parts = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in blocking.items()]
                parts += [f"input file changed: {name}" for name in changed_inputs]
                raise ConfigError(
                    "run directory holds a different configuration: " + "; ".join(parts),
                    path=run.config_path,
                    hint="use another output directory, or rerun with --force to replace the stored config",
                )
            if differences:
                with (path / "config-history.jsonl").open("a", encoding="utf-8") as handle:
                    record = {"time": _now(), "changed": {k: list(v) for k, v in differences.items()}, "forced": force}
                    handle.write(json.dumps(record) + "\n")
            run.resumed = True
        else:
            path.mkdir(parents=True, exist_ok=True)
        run.checkpoints_dir.mkdir(exist_ok=True)
        run.tb_dir.mkdir(exist_ok=True)
        text = yaml.safe_dump(new_config, sort_keys=False)
        if not run.config_path.exists() or run.config_path.read_text(encoding="utf-8") != text:
            atomic_write_text(run.config_path, text)
        run._settle_best()
        _write_json(path / cls.INPUTS, inputs)
        environment = {"time": _now(), "argv": sys.argv, "versions": library_versions(), "machine": machine_info()}
        if run.resumed and (path / cls.ENVIRONMENT).exists():
            # A run resumed on another machine keeps the machines it ran on before: its steps come from all of them.
            before = json.loads((path / cls.ENVIRONMENT).read_text(encoding="utf-8"))
            earlier = [m for m in before.get("earlier_machines", []) if m != environment["machine"]]
            if before.get("machine") and before["machine"] != environment["machine"] and before["machine"] not in earlier:
                earlier.append(before["machine"])
            if earlier:
                environment["earlier_machines"] = earlier
        _write_json(path / cls.ENVIRONMENT, environment)
        return run

    def config(self) -> dict[str, Any]:
        """The stored resolved configuration."""
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    # -- metrics ------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
        """Append ``{"step", "time", **metrics}`` to metrics.jsonl; numbers also go to TensorBoard (and wandb)."""
        record: dict[str, Any] = {"step": int(step), "time": _now()}
        for key, value in metrics.items():
            record[prefix + key] = _jsonable(value)
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        numbers = {
            key: value for key, value in record.items()
            if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)
        }
        writer = self._tensorboard()
        if writer is not None:
            for key, value in numbers.items():
                writer.add_scalar(key, value, int(step))
            writer.flush()
        if self._wandb is not None and numbers:
            self._wandb.log(numbers, step=int(step))

    def enable_wandb(self, project: str, *, entity: str | None = None) -> None:
        """Mirror every metric logged from now on to Weights & Biases (optional extra ``wandb``).

        The wandb run id is kept in ``RUN/wandb_id``, so a resumed run keeps logging to the same
        wandb run (wandb ignores steps it has already seen, e.g. those logged after the checkpoint a
        run resumes from); metrics.jsonl and TensorBoard stay the record either way.
        """
        try:
            wandb = _import_wandb()
        except ImportError:
            raise ConfigError(
                "wandb_project is set but the wandb package is not installed",
                path=self.config_path,
                hint='pip install -e ".[wandb]", or remove wandb_project from the config',
            ) from None
        id_path = self.path / "wandb_id"
        run_id = id_path.read_text(encoding="utf-8").strip() if id_path.exists() else uuid.uuid4().hex[:16]
        id_path.write_text(run_id + "\n", encoding="utf-8")
        self._wandb = wandb.init(
            project=project, entity=entity, id=run_id, resume="allow", name=self.path.name,
            dir=str(self.path), config=self.config(),
        )

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl, in order (a line cut by a kill is skipped)."""
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def _tensorboard(self):
        if self._tb_writer is None and not self._tb_failed:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time; metrics.jsonl is the record
                self._tb_failed = True
                return None
            self._tb_writer = SummaryWriter(log_dir=str(self.tb_dir))
        return self._tb_writer

    def close(self) -> None:
        """Flush and close the TensorBoard writer and the wandb run, if any."""
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    # -- checkpoints --------------------------------------------------------------------
    def last_checkpoint(self) -> Path | None:
        """The latest complete ``checkpoints/checkpoint-<step>`` folder, or ``None``."""
        return last_checkpoint(self.checkpoints_dir)

    def best(self) -> dict[str, Any] | None:
        """``{"metric", "value", "step", "higher_is_better", ...}`` of the best checkpoint, or ``None``.

        First finishes (or undoes) a ``best/`` update that a kill cut short, see :meth:`update_best`.
        """
        self._settle_best()
        if not self.best_json_path.exists():
            return None
        return json.loads(self.best_json_path.read_text(encoding="utf-8"))

    def update_best(
        self,
        step: int,
        metric: str,
        value: float,
        *,
        save: Callable[[Path], None] | None = None,
        higher_is_better: bool = True,
        extra: Mapping[str, Any] | None = None,
        min_delta: float = 0.0,
    ) -> bool:
        """Keep ``best/`` if ``value`` beats the stored best by more than ``min_delta``; returns whether it did.

        ``min_delta`` (as in Keras' early stopping) is the smallest change that counts as a gain:
        with the untrained policy evaluated first, a checkpoint replaces it only when it beats it by
        more than the evaluation's own noise.

        ``save(directory)`` writes the checkpoint into a temporary sibling folder (``best.new/``),
        which also gets a copy of the record (``best/best.json``) and is fsync'ed; then it is
        swapped with ``best/`` in one atomic exchange (``renameat2``/``renamex_np``), or where
        the file system has none, by two renames back to back. ``best.json`` is written
        atomically after. So a kill at any point leaves a complete ``best/``; the record inside
        it says which step it holds, and the next :meth:`best`, :meth:`update_best` or
        :meth:`create_or_resume` brings ``best.json`` in line and removes leftovers.
        """
        current = self.best()
        if current is not None and current.get("metric") == metric:
            old = float(current["value"])
            if not (value > old + min_delta if higher_is_better else value < old - min_delta):
                return False
        record = {"metric": metric, "value": float(value), "step": int(step), "higher_is_better": higher_is_better}
        record.update({k: _jsonable(v) for k, v in (extra or {}).items()})
        if save is not None:
            staging = self._best_staging
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            save(staging)
            _write_json(staging / self.BEST_JSON, record)
            _fsync_tree(staging)
            _swap_in(staging, self.best_dir)
        elif (self.best_dir / self.BEST_JSON).exists():
            # best/ no longer holds the best (nothing was saved): its record must not win in best().
            (self.best_dir / self.BEST_JSON).unlink()
        _write_json(self.best_json_path, record)
        for leftover in (self._best_staging, self._best_aside):
            shutil.rmtree(leftover, ignore_errors=True)
        return True

    @property
    def _best_staging(self) -> Path:
        return self.path / "best.new"

    @property
    def _best_aside(self) -> Path:
        return self.path / "best.old"

    def _settle_best(self) -> None:
        """Repair what a kill during :meth:`update_best` left: no best/, a stale best.json, leftovers."""
        if not self.best_dir.exists() and self._best_aside.is_dir():
            os.rename(self._best_aside, self.best_dir)  # killed between the two renames: undo the first
        inner = self.best_dir / self.BEST_JSON
        if inner.is_file():
            try:
                record = json.loads(inner.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                record = None
            stored = None
            if self.best_json_path.exists():
                try:
                    stored = json.loads(self.best_json_path.read_text(encoding="utf-8"))
                except json.JSONDecodeError:
                    stored = None
            if record is not None and record != stored:
                _write_json(self.best_json_path, record)  # killed after the swap, before best.json
        if self.best_dir.exists():
            for leftover in (self._best_staging, self._best_aside):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)

    # -- report -------------------------------------------------------------------------
    def write_report(self, title: str, sections: Mapping[str, str | Mapping[str, Any]] | None = None) -> Path:
        """Write report.md: config, inputs, versions, best checkpoint, last metrics, plus ``sections``.

        A section value that is a mapping is rendered as a two-column table.
        """
        lines = [f"# {title}", "", f"Run directory: `{self.path}`  ", f"Written: {_now()}", ""]
        for name, body in (sections or {}).items():
            lines += [f"## {name}", ""]
            lines += _table(body) if isinstance(body, Mapping) else [str(body)]
            lines.append("")
        best = self.best()
        lines += ["## Best checkpoint", ""]
        lines += _table(best) if best else ["(none yet)"]
        lines.append("")
        metrics = self.read_metrics()
        if metrics:
            lines += ["## Last logged metrics", ""]
            lines += _table(metrics[-1])
            lines.append("")
        lines += ["## Configuration", "", "```yaml", self.config_path.read_text(encoding="utf-8").rstrip(), "```", ""]
        inputs_path = self.path / self.INPUTS
        if inputs_path.exists():
            inputs = json.loads(inputs_path.read_text())
            if inputs:
                lines += ["## Inputs (sha256)", ""]
                lines += [f"- `{name}`: {info['sha256'][:16]}… ({info['bytes']:,} bytes)" for name, info in inputs.items()]
                lines.append("")
        env_path = self.path / self.ENVIRONMENT
        if env_path.exists():
            environment = json.loads(env_path.read_text())
            lines += ["## Versions", ""]
            lines += _table({k: v for k, v in environment["versions"].items() if v is not None})
            lines.append("")
            if environment.get("machine"):  # runs started before the machine was recorded have none
                machine = environment["machine"]
                lines += ["## Machine", ""]
                lines += _table({**machine, "gpus": ", ".join(machine.get("gpus") or []) or "none"})
                for earlier in environment.get("earlier_machines", []):
                    lines.append(f"\nResumed from a run on another machine: {earlier['cpu']} "
                                 f"(native bf16: {earlier.get('cpu_native_bf16')}; GPUs: {', '.join(earlier.get('gpus') or []) or 'none'}).")
                lines.append("")
        self.report_path.write_text("\n".join(lines), encoding="utf-8")
        try:  # report.html + plots/: the training curves (`searchrl report RUN` rebuilds them)
            from searchrl.report import build_report

            if self.metrics_path.exists():
                build_report([self.path])
        except Exception as err:  # noqa: BLE001 - the run is saved; only its plots are missing
            import warnings

            warnings.warn(f"{self.path}: report.html not written: {err}", stacklevel=2)
        return self.report_path


# --------------------------------------------------------------------------------------


def _import_wandb():
    """``import wandb``, kept in one place so tests can hand in a recorder."""
    import wandb

    return wandb


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _fsync_tree(directory: Path) -> None:
    """fsync every file and folder under ``directory`` (so a rename of it survives a crash)."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(root)


def _exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``, macOS ``renamex_np(RENAME_SWAP)``).

    Returns False when the platform or file system has no such call.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    src, dst = os.fsencode(str(a)), os.fsencode(str(b))
    if hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        result = libc.renameat2(at_fdcwd, src, at_fdcwd, dst, rename_exchange)
    elif hasattr(libc, "renamex_np"):
        rename_swap = 2
        result = libc.renamex_np(src, dst, rename_swap)
    else:
        return False
    return result == 0


def _swap_in(new: Path, target: Path) -> None:
    """Make the folder ``new`` appear at ``target``; the previous ``target`` (if any) is removed.

    There is always a complete folder at ``target``, except with the two-rename fallback,
    between its renames; :meth:`RunDirectory._settle_best` undoes that case on the next read.
    """
    if not target.exists():
        os.rename(new, target)
    elif _exchange_paths(new, target):
        shutil.rmtree(new)  # now the old folder
    else:
        aside = target.with_name(target.name + ".old")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
        os.rename(new, target)
        shutil.rmtree(aside)
    fsync_path(target.parent)


def _table(mapping: Mapping[str, Any]) -> list[str]:
    rows = ["| key | value |", "| --- | --- |"]
    for key, value in mapping.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        rows.append(f"| {key} | {value} |")
    return rows


__all__ = [
    "RunDirectory",
    "TRACKED_LIBRARIES",
    "checkpoint_step",
    "config_differences",
    "config_to_dict",
    "finished_run_of",
    "hash_inputs",
    "last_checkpoint",
    "library_versions",
    "machine_info",
    "sha256_file",
    "stored_config",
]
