"""Every usage and file error of the ``searchrl`` command: a short message, exit code 2, no traceback."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

import searchrl
from searchrl.cli import main
from searchrl.config import load_config
from searchrl.errors import ConfigError


def run_cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    """Run ``searchrl ARGS`` in this process; returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, err  # the error, and at most a "try --help" line
    assert lines[0].startswith("error:"), err
    for fragment in fragments:
        assert fragment in " ".join(err.split()), err


@pytest.fixture
def beir(tmp_path) -> Path:
    root = tmp_path / "tiny"
    (root / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "title": "", "text": "oxygen tank exploded"}, {"_id": "d2", "title": "", "text": "crew splashed down"}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    queries = [{"_id": "q1", "text": "oxygen tank"}, {"_id": "q2", "text": "crew splashdown"}]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("q1\td1\t1\nq2\td2\t1\n", encoding="utf-8")
    return root


# --- usage errors ----------------------------------------------------------------------------


def test_bare_command_shows_help_without_a_traceback(capsys):
    code, out, err = run_cli(capsys)
    assert code == 2
    assert "Traceback" not in out + err
    assert "index" in out + err and "eval" in out + err  # the list of commands


def test_bare_command_group_shows_its_help(capsys):
    code, out, err = run_cli(capsys, "models")
    assert code == 2 and "Traceback" not in out + err
    assert "pull" in out + err


def test_unknown_command(capsys):
    code, _, err = run_cli(capsys, "serch")
    assert_usage_error(code, err, "No such command 'serch'", "searchrl --help")


def test_missing_option(capsys):
    code, _, err = run_cli(capsys, "search", "oxygen")
    assert_usage_error(code, err, "Missing option '--index'", "searchrl search --help")


def test_missing_argument(tmp_path, capsys):
    code, _, err = run_cli(capsys, "search", "--index", tmp_path)
    assert_usage_error(code, err, "Missing argument")


def test_option_of_the_wrong_type(tmp_path, capsys):
    code, _, err = run_cli(capsys, "search", "--index", tmp_path, "-k", "abc", "oxygen")
    assert_usage_error(code, err, "-k", "integer")


def test_unknown_option_and_choice(capsys, beir):
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--frobnicate")
    assert_usage_error(code, err, "No such option: --frobnicate")
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--retriever", "splade")
    assert_usage_error(code, err, "splade")


def test_version(capsys):
    code, out, err = run_cli(capsys, "--version")
    assert code == 0, err
    assert out.strip() == f"searchrl {searchrl.__version__}"


def test_help_still_exits_zero(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "--version" in out


# --- file errors -----------------------------------------------------------------------------


def test_index_out_that_is_a_file(beir, tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me", encoding="utf-8")
    code, _, err = run_cli(capsys, "index", "--data", beir, "--out", target)
    assert_usage_error(code, err, "afile", "is a file")
    assert target.read_text(encoding="utf-8") == "keep me"


def test_index_out_that_is_a_folder_of_other_files(beir, tmp_path, capsys):
    target = tmp_path / "notes"
    target.mkdir()
    (target / "todo.txt").write_text("keep me", encoding="utf-8")
    code, _, err = run_cli(capsys, "index", "--data", beir, "--out", target)
    assert_usage_error(code, err, "notes", "not an index")
    assert (target / "todo.txt").read_text(encoding="utf-8") == "keep me"


def test_per_query_that_is_a_folder_fails_before_evaluating(beir, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "per-query"
    folder.mkdir()
    monkeypatch.setattr("searchrl.cli.retrieval.load_beir", lambda *a, **k: pytest.fail("evaluated first"))
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--per-query", folder)
    assert_usage_error(code, err, "per-query", "is a folder")


def test_unreadable_file(beir, capsys, monkeypatch):
    corpus = beir / "corpus.jsonl"
    real_open = builtins.open

    def deny(file, *args, **kwargs):
        if Path(str(file)) == corpus:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)  # the tests may run as root, where chmod 000 still reads
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test")
    assert_usage_error(code, err, "corpus.jsonl", "Permission denied")


# --- config files ----------------------------------------------------------------------------


def _config_model():
    from pydantic import BaseModel, ConfigDict

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        steps: int = 1
        model: str = "x"

    return Config


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda p: p.mkdir(), ["is a folder"]),
        (lambda p: p.write_bytes(b"\x8c\x00\xff\xfe binary"), ["not UTF-8 text"]),
        (lambda p: p.write_text('model: !!python/object/apply:os.system ["echo hi"]\n'), [":1", "!!python/object/apply:os.system", "not allowed"]),
        (lambda p: p.write_text("steps: 1\nmodel: a\nsteps: 2\n"), [":3", "duplicate key 'steps'"]),
        (lambda p: p.write_text("steps: [1,\n"), ["not valid YAML"]),
    ],
    ids=["folder", "binary", "python-tag", "duplicate-key", "broken"],
)
def test_bad_config_files_are_one_line_errors(tmp_path, make, fragments):
    path = tmp_path / "config.yaml"
    make(path)
    with pytest.raises(ConfigError) as err:
        load_config(_config_model(), path)
    message = err.value.format()
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_nested_duplicate_keys_are_refused_too(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("outer:\n  a: 1\n  a: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_config(_config_model(), path)


def test_a_config_folder_reaches_the_user_as_one_line(tmp_path, capsys):
    folder = tmp_path / "configs"
    folder.mkdir()
    code, _, err = run_cli(capsys, "train", "coaug", "--config", folder)
    assert_usage_error(code, err, "configs", "is a folder")


def test_output_file_under_a_file_is_named(beir, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("keep", encoding="utf-8")
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--per-query", blocker / "x.jsonl")
    assert_usage_error(code, err, "--per-query", "afile", "is a file, not a folder")


def test_search_index_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x", encoding="utf-8")
    code, _, err = run_cli(capsys, "search", "--index", target, "oxygen")
    assert_usage_error(code, err, "afile", "is a file, not an index folder")


def test_models_cache_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x", encoding="utf-8")
    code, _, err = run_cli(capsys, "models", "list", "--cache-dir", target)
    assert_usage_error(code, err, "afile", "is a file")
