"""Join the outputs of a sharded augmentation (``--shard 0/n`` … ``--shard n-1/n``) into one folder.

:func:`merge_shards` checks before writing anything that the folders are the ``n`` shards of one
job — every manifest made with the same settings (model, weights, prompts, sampling, inputs),
each shard present once and finished, no id written twice or into the wrong shard, as many
records as each manifest counts — then writes ``OUT/expansions.jsonl`` and ``OUT/manifest.json``
as the unsharded job would have (``settings.shard`` is ``null``), so ``searchrl eval
--doc-expansions`` reads it and rerunning the unsharded job into ``OUT`` finds nothing left to do.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from searchrl.augment.job import EXPANSIONS_FILE, MANIFEST_FILE, MANIFEST_FORMAT, parse_shard, shard_of
from searchrl.data.io import atomic_write_text, iter_jsonl, write_jsonl
from searchrl.errors import ConfigError, DataError


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"no {MANIFEST_FILE} here", path=folder, hint="give the --out folders of the sharded jobs")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"unreadable manifest: {err}", path=path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError("not a searchrl expansions manifest", path=path)
    return manifest


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first key path at which two JSON values differ, or ``None`` when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
        return None
    return None if a == b else prefix or "(value)"


def _sum_counts(counts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for part in counts:
        for key, value in part.items():
            if isinstance(value, dict):
                total[key] = dict(sorted((Counter(total.get(key, {})) + Counter(value)).items()))
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    return total


def merge_shards(out_dir: str | Path, shard_dirs: Sequence[str | Path], *, force: bool = False) -> dict[str, Any]:
    """Merge the folders of a sharded job into ``out_dir``; returns the merged manifest.

    Raises :class:`~searchrl.errors.ConfigError` or :class:`~searchrl.errors.DataError` naming
    the folder (and line) at fault: settings that differ, a shard missing or given twice, a
    shard unfinished or run with a limit, an id duplicated or in the wrong shard. ``out_dir``
    must not hold expansions already unless ``force``.
    """
    out_dir = Path(out_dir)
    folders = [Path(folder) for folder in shard_dirs]
    if not folders:
        raise ConfigError("no shard folders given", hint="searchrl augment merge OUT SHARD_DIR...")
    if any(folder.resolve() == out_dir.resolve() for folder in folders):
        raise ConfigError("the output folder is one of the shard folders", path=out_dir, hint="merge into a new folder")
    manifests = [_read_manifest(folder) for folder in folders]

    reference_settings = {**manifests[0]["settings"], "shard": None}
    shards: dict[int, Path] = {}
    count = None
    for folder, manifest in zip(folders, manifests):
        settings = manifest.get("settings", {})
        if not settings.get("shard"):
            raise ConfigError("this folder is not a shard (it was run without --shard)", path=folder)
        index, total = parse_shard(settings["shard"])
        if count is not None and total != count:
            raise ConfigError(f"shard {index}/{total} does not belong to a job of {count} shards", path=folder)
        count = total
        if index in shards:
            raise ConfigError(f"shard {index}/{total} is given twice (also {shards[index]})", path=folder)
        shards[index] = folder
        differs = _first_difference(reference_settings, {**settings, "shard": None})
        if differs:
            raise ConfigError(
                f"made with other settings than {folders[0]} ({differs} differs)",
                path=folder,
                hint="merge only the shards of one job (same model, weights, prompts, sampling and data)",
            )
        if manifest.get("run", {}).get("limit") is not None:
            raise ConfigError(
                f"shard {index}/{total} was run with --limit {manifest['run']['limit']}, so it covers part of its shard",
                path=folder,
                hint="rerun it without --limit (it resumes) before merging",
            )
        if manifest.get("status") != "complete":
            raise ConfigError(
                f"shard {index}/{total} is not finished (status {manifest.get('status')!r})",
                path=folder,
                hint="rerun that shard's command to finish it, then merge",
            )
    assert count is not None
    missing = sorted(set(range(count)) - set(shards))
    if missing:
        raise ConfigError(
            f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)} of {count}",
            hint="give every shard's folder",
        )

    records: list[dict] = []
    seen: dict[str, Path] = {}
    for index in range(count):
        folder = shards[index]
        path = folder / EXPANSIONS_FILE
        before = len(records)
        for line, record in iter_jsonl(path):
            item_id = record.get("id")
            if not isinstance(item_id, str) or "expansion" not in record:
                raise DataError("not an expansion record", path=path, line=line)
            if item_id in seen:
                raise DataError(f"id {item_id!r} is also in {seen[item_id]}", path=path, line=line)
            if shard_of(item_id, count) != index:
                raise DataError(
                    f"id {item_id!r} belongs to shard {shard_of(item_id, count)}/{count}, not {index}/{count}",
                    path=path,
                    line=line,
                    hint="the file was edited or comes from another job",
                )
            seen[item_id] = folder
            records.append(record)
        expected = manifests[folders.index(folder)]["counts"]["done"]
        if len(records) - before != expected:
            raise DataError(
                f"{len(records) - before} records, but the manifest counts {expected}",
                path=path,
                hint="the file was edited; rerun that shard into a new folder",
            )

    out_dir.mkdir(parents=True, exist_ok=True)
    if not force and ((out_dir / EXPANSIONS_FILE).exists() or (out_dir / MANIFEST_FILE).exists()):
        raise ConfigError(
            "the output folder holds expansions already", path=out_dir, hint="choose a new folder, or add --force"
        )
    ordered = [manifests[folders.index(shards[i])] for i in range(count)]
    merged = {
        "format": MANIFEST_FORMAT,
        "settings": reference_settings,
        "source": {**ordered[0].get("source", {}), "merged_from": [str(shards[i].resolve()) for i in range(count)]},
        "run": {key: value for key, value in ordered[0].get("run", {}).items() if key != "batch_size"},
        "status": "complete",
        "started_at": min(m.get("started_at") or "" for m in ordered) or None,
        "resumed_at": [],
        "finished_at": max(m.get("finished_at") or "" for m in ordered) or None,
        "elapsed_s": round(sum(float(m.get("elapsed_s", 0.0)) for m in ordered), 3),
        "torn_lines_dropped": sum(int(m.get("torn_lines_dropped", 0)) for m in ordered),
        "counts": _sum_counts([m["counts"] for m in ordered]),
    }
    write_jsonl(out_dir / EXPANSIONS_FILE, records)
    atomic_write_text(out_dir / MANIFEST_FILE, json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
    return merged
