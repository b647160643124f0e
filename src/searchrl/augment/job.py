"""Running the expansion policy: in memory (:func:`augment_items`) or as a resumable job on disk.

:class:`ExpansionPolicy` holds everything that decides what an expansion is — prompt style,
``think``, answer prefill, the word caps, strict or lenient parsing and the sampling settings —
so the trainer and the augmentation job build prompts and parse completions identically.

:class:`CorpusAugmentationJob` expands many items into ``OUT/expansions.jsonl`` (one
``{"id", "expansion", "ok", "reason"[, "completion"]}`` per line, readable by
:func:`searchrl.data.expansions.load_expansions`) and ``OUT/manifest.json``. Each finished batch
is appended and fsync'ed, so a killed job loses at most the batch in flight; rerunning the
same command skips the ids already written, drops a torn last line and carries on. A rerun
with different settings — including other weights behind the same model name, or another
server — is refused instead of mixing two kinds of expansions in one file (``force=True``
starts the folder over). One job at a time writes into a folder: :meth:`CorpusAugmentationJob.run`
holds an exclusive lock on ``OUT/augment.lock``, and a second one fails at once. Nothing is
written before the engine has started, so a failed start (a typo in the model name) leaves
nothing that blocks the corrected command.

Sharding: ``shard=(i, n)`` keeps the items whose id hashes to ``i`` modulo ``n`` (a stable
hash, independent of order and of the other items), so ``n`` machines can each run one shard
into their own folder; the union is the concatenation of the shards' files::

    cat out-*/expansions.jsonl > expansions.jsonl
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from searchrl.augment.parse import DEFAULT_MAX_WORDS, ParsedExpansion, parse_expansion
from searchrl.augment.prompts import (
    PromptStyle,
    Role,
    build_expansion_prompt,
    expansion_prompt_template,
    prefill_text,
    truncate_words,
)
from searchrl.data.io import atomic_write_text
from searchrl.errors import ConfigError, DataError, EngineError
from searchrl.llm.engine import Chat, GenerationEngine, SamplingParams
from searchrl.progress import progress_bar

MANIFEST_FORMAT = "searchrl-expansions/1"
EXPANSIONS_FILE = "expansions.jsonl"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "augment.lock"


def default_expansion_sampling() -> SamplingParams:
    """Greedy, up to 128 new tokens, stopping right after ``</answer>`` (nothing useful follows it)."""
    return SamplingParams(temperature=0.0, max_new_tokens=128, stop=["</answer>"])


class ExpansionPolicy(BaseModel):
    """What an expansion is: prompts, parsing and sampling, shared by training and augmentation.

    With ``prefill`` (the default) the prompt ends with an assistant message ``<answer>``
    (``<think>`` when thinking) that the engine continues, so a completion is the answer text
    itself, ended by ``</answer>`` or the end of the turn; :meth:`parse` puts the prefill back
    in front before applying the (strict by default) rules of :func:`parse_expansion`.

    >>> policy = ExpansionPolicy(prompt_style="sparse", think=False, max_words=4)
    >>> policy.parse(" one two three four five</answer>").text
    'one two three four'
    >>> ExpansionPolicy(prefill=False).parse("<answer>one two</answer>").text
    'one two'
    """

    model_config = ConfigDict(extra="forbid")

    prompt_style: PromptStyle = Field("sparse", description="sparse: key terms for BM25; dense: a passage for an encoder")
    think: bool = False
    prefill: bool = Field(True, description="open the assistant turn with <answer> (<think> when thinking)")
    max_words: int = Field(DEFAULT_MAX_WORDS, ge=1, description="expansions are cut to this many words")
    max_input_words: int | None = Field(
        384, ge=1, description="the query or document shown to the model is cut to this many words"
    )
    lenient: bool = Field(False, description="salvage text from completions without a proper <answer> block")
    sampling: SamplingParams = Field(default_factory=default_expansion_sampling)

    @model_validator(mode="before")
    @classmethod
    def _stored_under_its_old_name(cls, data: Any) -> Any:
        # Manifests and expansion_policy.json files written before the field was renamed.
        if isinstance(data, dict) and "retriever" in data and "prompt_style" not in data:
            data = {("prompt_style" if k == "retriever" else k): v for k, v in data.items()}
        return data

    def prompt(self, role: Role, text: str) -> Chat:
        """The chat that asks for an expansion of ``text`` in ``role``."""
        return build_expansion_prompt(
            role, self.prompt_style, truncate_words(text, self.max_input_words), think=self.think, prefill=self.prefill
        )

    def prompt_template(self, role: Role) -> Chat:
        """The template for ``role`` (``{text}`` marks the input), as recorded in manifests."""
        return expansion_prompt_template(role, self.prompt_style, think=self.think, prefill=self.prefill)

    @property
    def prefill_text(self) -> str:
        """What the prompt puts at the start of the assistant turn (``""`` without prefill)."""
        return prefill_text(think=self.think, prefill=self.prefill)

    def parse(self, completion: str) -> ParsedExpansion:
        """The expansion in ``completion`` under this policy's cap, strictness and prefill."""
        return parse_expansion(completion, max_words=self.max_words, lenient=self.lenient, prefill=self.prefill_text)

    def complete(self, engine: GenerationEngine, role: Role, texts: Sequence[str], *, n: int = 1) -> list[list[str]]:
        """Raw completions, ``n`` per text, from ``engine`` with this policy's sampling settings."""
        if not texts:
            return []
        params = self.sampling.model_copy(update={"n": n})
        completions = engine.generate([self.prompt(role, text) for text in texts], params)
        if len(completions) != len(texts) or any(len(group) != n for group in completions):
            raise EngineError(
                f"engine returned {len(completions)} groups for {len(texts)} prompts (expected {n} completions each)",
                hint="the generation backend is broken or misconfigured",
            )
        return completions

    def sample(self, engine: GenerationEngine, role: Role, texts: Sequence[str], *, n: int) -> list[list[ParsedExpansion]]:
        """``n`` parsed expansions per text."""
        return [[self.parse(c) for c in group] for group in self.complete(engine, role, texts, n=n)]

    def expand(self, engine: GenerationEngine, role: Role, texts: Sequence[str]) -> list[ParsedExpansion]:
        """One parsed expansion per text (greedy by default)."""
        return [group[0] for group in self.sample(engine, role, texts, n=1)]


def augment_items(
    engine: GenerationEngine,
    policy: ExpansionPolicy,
    role: Role,
    items: Mapping[str, str],
    *,
    batch_size: int = 16,
    show_progress: bool | None = None,
) -> dict[str, ParsedExpansion]:
    """Expand ``{id: text}`` in memory, ``batch_size`` prompts per engine call; nothing is written."""
    ids = list(items)
    results: dict[str, ParsedExpansion] = {}
    disable = None if show_progress is None else not show_progress
    with progress_bar(f"expanding {role}s", total=len(ids), unit=role[:3] + "s", disable=disable) as advance:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            for item_id, parsed in zip(batch, policy.expand(engine, role, [items[i] for i in batch])):
                results[item_id] = parsed
            advance(len(batch))
    return results


# ----------------------------------------------------------------------------- sharding


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; raises :class:`ConfigError` otherwise."""
    try:
        index_text, count_text = spec.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"shard {spec!r} is not of the form i/n", hint="e.g. --shard 0/4 (shards are numbered from 0)") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(
            f"shard {spec!r} is out of range", hint=f"shards of {max(count, 1)} are numbered 0 to {max(count, 1) - 1}"
        )
    return index, count


def shard_of(item_id: str, count: int) -> int:
    """The shard (of ``count``) that ``item_id`` belongs to: a stable hash, same on every machine."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def select_shard(ids: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The ids of ``shard`` (all ids when ``None``), in their original order."""
    if shard is None:
        return list(ids)
    index, count = shard
    return [item_id for item_id in ids if shard_of(item_id, count) == index]


# ----------------------------------------------------------------------------- the job


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fingerprint(items: Mapping[str, str]) -> dict[str, Any]:
    digest = hashlib.sha256()
    for item_id, text in items.items():
        digest.update(item_id.encode("utf-8") + b"\x00" + text.encode("utf-8") + b"\x00")
    return {"count": len(items), "sha256": digest.hexdigest()}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: tree}


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def _exclusive_lock(lock_path: Path, out_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (released by the OS if the process dies).

    A second holder fails at once with :class:`ConfigError`. Where ``fcntl`` does not exist
    (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            raise ConfigError(
                "another `searchrl augment` is running into this folder"
                + (f" (process {holder})" if holder else "")
                + f"; it holds {lock_path.name}",
                path=out_dir,
                hint="wait for it to finish (rerunning then resumes), or use another --out folder",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _read_finished_records(path: Path) -> tuple[list[tuple[int, dict]], bool]:
    """``(line number, record)`` for the complete records of ``path``; a torn last line (no newline: the writer was killed) is cut off.

    Returns the records and whether a torn line was removed. A malformed *complete* line is
    not a kill but corruption, and raises.
    """
    if not path.exists():
        return [], False
    data = path.read_bytes()
    torn = bool(data) and not data.endswith(b"\n")
    if torn:
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        data = data[:keep]
    records = []
    for line_number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or "expansion" not in record:
            raise DataError(
                "not an expansion record",
                path=path,
                line=line_number,
                hint="the file was edited or corrupted; fix or delete that line, or use a new --out folder",
            )
        records.append((line_number, record))
    return records, torn


class CorpusAugmentationJob:
    """Expand ``items`` (``{id: text}``) into ``out_dir``; :meth:`run` is resumable and idempotent.

    ``engine`` is a :class:`GenerationEngine` or a zero-argument callable returning one (called
    only if there is work left, so a finished job never loads a model). ``model_name`` and
    ``engine_name`` identify the generator in the manifest; ``source`` is free-form provenance
    (data folder, split). ``shard`` keeps one stable-hash shard of the items and ``limit`` the
    first ``limit`` of those. The settings that decide the output — role, policy, prompts,
    model, engine, ``generator`` (what the model name stands for: a fingerprint of the resolved
    weights, or the server address, see :func:`searchrl.llm.identity.generator_identity`), shard
    and a hash of the items — must match the manifest of an earlier run in ``out_dir``, or
    :meth:`run` raises :class:`ConfigError`; batch size and limit may change. ``force`` deletes
    the earlier output and starts over instead.
    """

    def __init__(
        self,
        items: Mapping[str, str],
        out_dir: str | Path,
        *,
        role: Role,
        policy: ExpansionPolicy | None = None,
        engine: GenerationEngine | Callable[[], GenerationEngine],
        model_name: str | None = None,
        engine_name: str | None = None,
        source: Mapping[str, Any] | None = None,
        batch_size: int = 16,
        shard: tuple[int, int] | None = None,
        limit: int | None = None,
        keep_completions: bool = True,
        generator: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        if role not in ("query", "document"):
            raise ConfigError(f"unknown expansion role {role!r}", hint="use 'query' or 'document'")
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be positive, got {limit}")
        self.items = dict(items)
        self.out_dir = Path(out_dir)
        self.role = role
        self.policy = policy or ExpansionPolicy()
        self._engine = engine
        if isinstance(engine, GenerationEngine):
            model_name = model_name or engine.model_name
            engine_name = engine_name or type(engine).__name__
        self.model_name = model_name or "unknown"
        self.engine_name = engine_name or "unknown"
        self.source = dict(source or {})
        self.batch_size = batch_size
        self.shard = shard
        self.limit = limit
        self.keep_completions = keep_completions
        self.generator = json.loads(json.dumps(dict(generator))) if generator is not None else None
        self.force = force

    @property
    def expansions_path(self) -> Path:
        return self.out_dir / EXPANSIONS_FILE

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_FILE

    @property
    def lock_path(self) -> Path:
        return self.out_dir / LOCK_FILE

    def selected_ids(self) -> list[str]:
        """The ids this job covers: its shard of the items, then the first ``limit`` of them."""
        ids = select_shard(list(self.items), self.shard)
        return ids if self.limit is None else ids[: self.limit]

    def settings(self) -> dict[str, Any]:
        """Everything that decides the output; must match between runs into one folder."""
        return {
            "role": self.role,
            "model": self.model_name,
            "engine": self.engine_name,
            "generator": self.generator,
            "policy": self.policy.model_dump(mode="json"),
            "prompt": self.policy.prompt_template(self.role),
            "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
            "inputs": _fingerprint(self.items),
        }

    # -- resuming -------------------------------------------------------------------------

    def _check_previous_manifest(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            if self.expansions_path.exists() and self.expansions_path.stat().st_size > 0:
                raise ConfigError(
                    f"{EXPANSIONS_FILE} exists without a {MANIFEST_FILE}, so its settings are unknown",
                    path=self.out_dir,
                    hint="use a new --out folder, or delete this one to start over",
                )
            return None
        try:
            previous = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(
                f"unreadable manifest: {err}", path=self.manifest_path, hint="delete the --out folder to start over"
            ) from None
        if not isinstance(previous, dict) or previous.get("format") != MANIFEST_FORMAT:
            raise ConfigError(
                "not a searchrl expansions manifest", path=self.manifest_path, hint="use a new --out folder"
            )
        saved = _flatten(previous.get("settings", {}))
        wanted = _flatten(json.loads(json.dumps(settings)))
        differences = [
            f"{key}: {saved.get(key, '<absent>')!r} before, {wanted.get(key, '<absent>')!r} now"
            for key in sorted(set(saved) | set(wanted))
            if saved.get(key, "<absent>") != wanted.get(key, "<absent>")
        ]
        if differences:
            shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
            raise ConfigError(
                f"this folder holds expansions made with different settings ({shown})",
                path=self.manifest_path,
                hint="rerun with the original settings to resume, choose a new --out folder, "
                "or add --force to delete this folder's expansions and start over",
            )
        return previous

    def _recover(self, selected: set[str]) -> tuple[dict[str, dict], bool]:
        records, torn = _read_finished_records(self.expansions_path)
        done: dict[str, dict] = {}
        for line_number, record in records:
            item_id = record["id"]
            if item_id in done:
                raise DataError(
                    f"id {item_id!r} written twice",
                    path=self.expansions_path,
                    line=line_number,
                    hint="the file was edited; use a new --out folder",
                )
            if item_id not in selected:
                raise DataError(
                    f"id {item_id!r} is not among this job's items",
                    path=self.expansions_path,
                    line=line_number,
                    hint="the folder belongs to another job; use a new --out folder",
                )
            done[item_id] = record
        return done, torn

    # -- running --------------------------------------------------------------------------

    def _counts(self, done: Mapping[str, dict], selected: int) -> dict[str, Any]:
        reasons = Counter(str(record.get("reason", "unknown")) for record in done.values())
        ok = reasons.get("ok", 0)
        empty = sum(1 for record in done.values() if not record.get("expansion"))
        return {
            "selected": selected,
            "done": len(done),
            "remaining": selected - len(done),
            "ok": ok,
            "malformed": len(done) - ok,
            "recovered": sum(1 for r in done.values() if r.get("reason") != "ok" and r.get("expansion")),
            "empty": empty,
            "truncated": sum(1 for r in done.values() if r.get("truncated")),
            "reasons": dict(sorted(reasons.items())),
        }

    def _engine_instance(self) -> GenerationEngine:
        if isinstance(self._engine, GenerationEngine):
            return self._engine
        engine = self._engine()
        if not isinstance(engine, GenerationEngine):
            raise EngineError(f"engine factory returned {type(engine).__name__}, not a GenerationEngine")
        self._engine = engine
        return engine

    def run(self, *, show_progress: bool | None = None) -> dict[str, Any]:
        """Expand every selected item not yet in ``expansions.jsonl``; returns the final manifest.

        An interruption (Ctrl-C, an engine error) leaves a consistent folder and a manifest
        marked ``"interrupted"``; calling :meth:`run` again continues where it stopped. Another
        job running into the same folder makes this one raise :class:`ConfigError` at once.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(self.lock_path, self.out_dir):
            return self._run_locked(show_progress)

    def _run_locked(self, show_progress: bool | None) -> dict[str, Any]:
        if self.force:
            for path in (self.manifest_path, self.expansions_path):
                path.unlink(missing_ok=True)
        settings = self.settings()
        previous = self._check_previous_manifest(settings)
        selected_ids = self.selected_ids()
        done, torn = self._recover(set(select_shard(list(self.items), self.shard)))
        remaining = [item_id for item_id in selected_ids if item_id not in done]
        # Start the engine before writing anything: a model that fails to load must not leave
        # a manifest behind that refuses the corrected command.
        engine = self._engine_instance() if remaining else None

        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "settings": settings,
            "source": self.source,
            "run": {"batch_size": self.batch_size, "limit": self.limit, "keep_completions": self.keep_completions},
            "status": "running",
            "started_at": (previous or {}).get("started_at") or _now(),
            "resumed_at": list((previous or {}).get("resumed_at", [])) + ([_now()] if previous else []),
            "finished_at": None,
            "elapsed_s": float((previous or {}).get("elapsed_s", 0.0)),
            "torn_lines_dropped": int((previous or {}).get("torn_lines_dropped", 0)) + int(torn),
            "counts": self._counts(done, len(selected_ids)),
        }
        _write_json_atomic(self.manifest_path, manifest)

        started = time.perf_counter()
        interrupted = True
        try:
            if engine is not None:
                self._generate(engine, remaining, done, show_progress)
            interrupted = False
        finally:
            elapsed = time.perf_counter() - started
            finished = {item_id: done[item_id] for item_id in selected_ids if item_id in done}
            generated_now = len(finished) - (len(selected_ids) - len(remaining))
            complete = len(finished) == len(selected_ids)
            manifest["status"] = "complete" if complete else "interrupted" if interrupted else "partial"
            manifest["elapsed_s"] = round(manifest["elapsed_s"] + elapsed, 3)
            manifest["counts"] = self._counts(finished, len(selected_ids))
            manifest["last_run"] = {
                "generated": generated_now,
                "seconds": round(elapsed, 3),
                "items_per_s": round(generated_now / elapsed, 3) if elapsed > 0 and generated_now > 0 else None,
            }
            if complete:
                manifest["finished_at"] = _now()
            _write_json_atomic(self.manifest_path, manifest)
        return manifest

    def _generate(
        self, engine: GenerationEngine, remaining: list[str], done: dict[str, dict], show_progress: bool | None
    ) -> None:
        disable = None if show_progress is None else not show_progress
        with open(self.expansions_path, "ab") as sink, progress_bar(
            f"expanding {self.role}s", total=len(remaining), unit=self.role[:3] + "s", disable=disable
        ) as advance:
            for start in range(0, len(remaining), self.batch_size):
                batch = remaining[start : start + self.batch_size]
                completions = self.policy.complete(engine, self.role, [self.items[i] for i in batch])
                lines, records = [], {}
                for item_id, (completion,) in zip(batch, completions):
                    parsed = self.policy.parse(completion)
                    record: dict[str, Any] = {
                        "id": item_id,
                        "expansion": parsed.text,
                        "ok": parsed.ok,
                        "reason": parsed.reason,
                    }
                    # The same keys on every line, so the file loads as one table (datasets, pandas).
                    record["truncated"] = bool(parsed.truncated)
                    if self.keep_completions:
                        record["completion"] = completion
                    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
                    records[item_id] = record
                # One write per batch, then fsync: after a kill the file holds whole batches
                # plus at most one torn line, which the next run cuts off.
                sink.write("".join(lines).encode("utf-8"))
                sink.flush()
                os.fsync(sink.fileno())
                done.update(records)
                advance(len(batch))
