"""The web demo: BM25 vs BM25 + expansions with relevance marks, the agent streamed turn by turn,
``searchrl demo``, and the page itself in a real browser (Chromium driven by Playwright)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from searchrl.agent.episode import ScriptedPolicy
from searchrl.cli import main
from searchrl.demo.app import Demo, bind, create_app
from searchrl.errors import ConfigError, DataError

CORPUS = [
    {"_id": "d1", "title": "Oxygen tank", "text": "Tank two exploded at 55 hours into the mission."},
    {"_id": "d2", "title": "Fuel cells", "text": "Fuel cells produced power and drinking water."},
    {"_id": "d3", "title": "Splashdown", "text": "The crew splashed down in the Pacific Ocean."},
    {"_id": "d4", "title": "", "text": "Lithium hydroxide canisters scrubbed carbon dioxide from the cabin."},
    {"_id": "d5", "title": "Launch", "text": "The rocket launched from Florida in April."},
    {"_id": "d6", "title": "Lunar module", "text": "The lunar module served as a lifeboat for the crew."},
]
QUERIES = [
    {"_id": "q1", "text": "why did the crew lose power"},  # relevant d1 shares no word with it: only expansions find it
    {"_id": "q2", "text": "how was carbon dioxide removed"},
    {"_id": "q9", "text": "a query of another split"},
]
DEV_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td6\t0\nq2\td4\t1\n"
DOC_EXPANSIONS = [{"id": "d1", "expansion": "power loss oxygen explosion"}, {"id": "d5", "expansion": "rocket"}]
QUERY_EXPANSIONS = [{"id": "q1", "expansion": "oxygen tank exploded"}]

QUESTION = "What exploded on the way to the Moon?"
SCRIPT = {QUESTION: ["<think>The tank, probably.</think> <search>oxygen tank crew</search>",
                     "<answer>oxygen tank two</answer>"]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def beir(tmp_path) -> Path:
    root = tmp_path / "tiny-beir"
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", CORPUS)
    write_jsonl(root / "queries.jsonl", QUERIES)
    (root / "qrels" / "dev.tsv").write_text(DEV_QRELS, encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("q9\td5\t1\n", encoding="utf-8")
    write_jsonl(root / "doc-expansions.jsonl", DOC_EXPANSIONS)
    write_jsonl(root / "query-expansions.jsonl", QUERY_EXPANSIONS)
    return root


@pytest.fixture
def agent_run(tmp_path, tiny_lm_dir) -> Path:
    """A run directory as `searchrl train agent` leaves it: config.yaml with tool/episode settings, best/ = the tiny model."""
    run = tmp_path / "agent-run"
    shutil.copytree(tiny_lm_dir, run / "best")
    config = {"tool": {"retriever": "bm25", "k": 2, "max_chars": 120},
              "episode": {"max_turns": 2, "max_turn_tokens": 48, "max_model_tokens": 120}}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return run / "best"


def load_demo(beir: Path, **options) -> Demo:
    return Demo.load(beir, doc_expansions=beir / "doc-expansions.jsonl",
                     query_expansions=beir / "query-expansions.jsonl", **options)


def script_the_agent(demo: Demo) -> None:
    """The tiny checkpoint's weights are random: play fixed turns through its tokenizer instead."""
    demo.agent.policy = ScriptedPolicy(demo.agent.policy.tokenizer, SCRIPT)


def read_events(response) -> list[tuple[str, dict]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# --------------------------------------------------------------------------------------
# the comparison


def test_compare_marks_relevant_documents_and_rank_changes(beir):
    demo = load_demo(beir)
    result = demo.compare(query_id="q1", k=3)

    assert result["query"] == "why did the crew lose power"
    assert result["expanded_query"] == "why did the crew lose power oxygen tank exploded"
    plain, expanded = result["columns"]["bm25"], result["columns"]["expanded"]
    assert "d1" not in [r["id"] for r in plain]  # BM25 alone cannot find it
    top = expanded[0]
    assert (top["id"], top["relevance"], top["other_rank"], top["change"]) == ("d1", 2, None, None)  # new in the ranking
    assert top["expansion"] == "power loss oxygen explosion"
    for column, other in ((plain, expanded), (expanded, plain)):
        for row in column:
            assert row["relevance"] == {"d1": 2, "d6": 0}.get(row["id"])
            ranks = [r["rank"] for r in other if r["id"] == row["id"]]
            if ranks:  # shown in both columns: the change is the places gained with expansions
                assert row["other_rank"] == ranks[0]
                gained = row["rank"] - ranks[0] if column is plain else ranks[0] - row["rank"]
                assert row["change"] == gained
    # Fuel cells: 1st with BM25, 4th with expansions (beyond k=3: shown on one side only)
    assert plain[0]["id"] == "d2" and (plain[0]["other_rank"], plain[0]["change"]) == (4, -3)
    wider = demo.compare(query_id="q1", k=4)["columns"]
    fuel_cells = [next(r for r in column if r["id"] == "d2") for column in (wider["bm25"], wider["expanded"])]
    assert [r["rank"] for r in fuel_cells] == [1, 4] and [r["change"] for r in fuel_cells] == [-3, -3]
    assert result["metrics"]["expanded"]["ndcg@10"] == 1.0 and result["metrics"]["bm25"]["ndcg@10"] == 0.0
    assert result["missed"] == []
    # with k=1 the relevant document of q2 is shown; q1's is missed by the BM25 side only
    assert demo.compare(query_id="q1", k=1)["missed"] == []
    assert demo.compare("carbon dioxide", k=1)["judged"] is False


def test_typed_query_uses_the_split_query_it_matches(beir):
    demo = load_demo(beir)
    same = demo.compare("  How was carbon dioxide REMOVED ")
    assert same["query_id"] == "q2" and same["columns"]["bm25"][0] == {**same["columns"]["bm25"][0], "id": "d4", "relevance": 1}
    typed = demo.compare("fuel cells")
    assert typed["query_id"] is None and typed["metrics"] is None
    assert [r["id"] for r in typed["columns"]["bm25"]] == ["d2"]
    assert all(r["relevance"] is None for r in typed["columns"]["expanded"])


def test_relevant_documents_outside_both_columns_are_listed(beir):
    (beir / "qrels" / "dev.tsv").write_text(DEV_QRELS + "q2\td5\t1\n", encoding="utf-8")
    result = load_demo(beir).compare(query_id="q2", k=2)
    assert result["missed"] == [{"id": "d5", "title": "Launch", "relevance": 1, "rank_bm25": None, "rank_expanded": None}]


def test_without_expansions_both_columns_agree(beir):
    demo = Demo.load(beir)
    result = demo.compare(query_id="q2")
    assert result["columns"]["bm25"] == [{**r, "expansion": None} for r in result["columns"]["expanded"]]
    assert all(r["change"] == 0 for r in result["columns"]["expanded"])
    assert demo.info()["split"] == "dev" and demo.info()["agent"] is None


def test_bad_requests_and_bad_inputs(beir, tmp_path):
    demo = load_demo(beir)
    with pytest.raises(ConfigError, match="k must be"):
        demo.compare("tank", k=0)
    with pytest.raises(DataError, match="no query 'q9'"):
        demo.compare(query_id="q9")
    with pytest.raises(ConfigError, match="empty"):
        demo.compare("   ")
    with pytest.raises(ConfigError, match="no agent"):
        demo.ask_events(QUESTION)
    with pytest.raises(DataError, match="expansions file for the documents"):
        Demo.load(beir, doc_expansions=beir / "query-expansions.jsonl")
    with pytest.raises(DataError, match="available splits: dev, test"):
        Demo.load(beir, split="train")
    with pytest.raises(DataError, match="data not found"):
        Demo.load(tmp_path / "missing")
    corpus_only = tmp_path / "corpus-only"
    corpus_only.mkdir()
    shutil.copy(beir / "corpus.jsonl", corpus_only / "corpus.jsonl")
    with pytest.raises(ConfigError, match="needs queries"):
        Demo.load(corpus_only, query_expansions=beir / "query-expansions.jsonl")
    assert Demo.load(corpus_only).info() == {**Demo.load(corpus_only).info(), "split": None, "queries": 0, "documents": 6}


# --------------------------------------------------------------------------------------
# the HTTP API and the agent's stream


def test_api_streams_the_agent_turn_by_turn(beir, agent_run):
    from fastapi.testclient import TestClient

    demo = load_demo(beir, model=agent_run)
    assert demo.info()["agent"]["settings"]["k"] == 2  # the training run's settings
    script_the_agent(demo)
    client = TestClient(create_app(demo))

    assert "<title>searchrl demo</title>" in client.get("/").text
    assert client.get("/api/info").json()["doc_expansions"] == 2
    assert [q["id"] for q in client.get("/api/queries").json()] == ["q1", "q2"]
    compared = client.get("/api/compare", params={"query_id": "q1", "k": 3}).json()
    assert compared["columns"]["expanded"][0]["id"] == "d1"
    bad = client.get("/api/compare", params={"q": "tank", "k": 500})
    assert bad.status_code == 400 and "k must be" in bad.json()["error"]

    response = client.get("/api/ask", params={"question": QUESTION})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = read_events(response)
    assert [name for name, _ in events] == ["start", "status", "turn", "turn", "turn", "done"]
    first, results, last = (data for name, data in events if name == "turn")
    assert first["think"] == ["The tank, probably."] and first["searches"] == ["oxygen tank crew"]
    assert results["kind"] == "results" and "[1] Oxygen tank" in results["text"]
    assert last["answer"] == "oxygen tank two"
    done = events[-1][1]
    assert done["answer"] == "oxygen tank two" and done["finish_reason"] == "answered"
    assert done["searches"][0]["query"] == "oxygen tank crew" and len(done["searches"][0]["doc_ids"]) == 2  # k=2
    assert done["sources"][0]["id"] == done["searches"][0]["doc_ids"][0] == "d1"

    empty = read_events(client.get("/api/ask", params={"question": " "}))
    assert empty == [("error", {"message": "the question is empty (type a question)"})]


def test_a_closed_page_stops_its_episode(beir, agent_run):
    """Leaving the page ends the episode at its next turn, so the next question does not wait for it."""
    import httpx

    demo = load_demo(beir, model=agent_run)
    page_gone = threading.Event()

    def search_forever(prompt: str, turn: int) -> str:
        if turn > 0:
            page_gone.wait(10)
        return f"<search>crew {turn}</search>"

    policy = ScriptedPolicy(demo.agent.policy.tokenizer, search_forever)
    demo.agent.policy = policy  # would search until the turn limit
    demo.agent.episode_config = demo.agent.episode_config.model_copy(update={"max_turns": 8, "max_model_tokens": 1000})
    with ServerThread(create_app(demo)) as server:
        with httpx.stream("GET", server.url + "/api/ask", params={"question": QUESTION}, timeout=10) as response:
            names = []
            for line in response.iter_lines():
                if line.startswith("event: "):
                    names.append(line.removeprefix("event: "))
                if names[-1:] == ["turn"]:
                    break  # the first turn has arrived: close the page
        time.sleep(1.0)  # the server looks for a closed connection every 0.2 s
        page_gone.set()
        deadline = time.monotonic() + 10
        while demo._agent_lock.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not demo._agent_lock.locked() and len(policy.calls) == 2  # the turn under way when the page closed

        demo.agent.policy = ScriptedPolicy(policy.tokenizer, SCRIPT)
        events = read_events(httpx.get(server.url + "/api/ask", params={"question": QUESTION}, timeout=10))
        assert events[1] == ("status", {"text": "generating"}) and events[-1][1]["answer"] == "oxygen tank two"


def test_the_real_checkpoint_plays_an_episode(beir, agent_run):
    """The tiny model writes gibberish, but the episode must still stream and finish within the run's limits."""
    from fastapi.testclient import TestClient

    client = TestClient(create_app(Demo.load(beir, model=agent_run)))
    events = read_events(client.get("/api/ask", params={"question": QUESTION}))
    assert events[0][0] == "start" and events[-1][0] == "done"
    done = events[-1][1]
    assert 1 <= done["turns"] <= 2 and done["finish_reason"] in ("answered", "no_action", "turn_limit", "token_budget")
    assert sum(name == "turn" and data["kind"] == "assistant" for name, data in events) == done["turns"]


# --------------------------------------------------------------------------------------
# the command


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_demo_serves_the_app(beir, capsys, monkeypatch):
    from fastapi.testclient import TestClient

    import searchrl.demo.app

    served = {}
    monkeypatch.setattr(searchrl.demo.app, "serve", lambda app, sock: served.update(app=app, port=sock.getsockname()[1]))
    code, _, err = run_cli(capsys, "demo", "--data", beir, "--doc-expansions", beir / "doc-expansions.jsonl",
                           "--split", "test", "--port", 0)
    assert code == 0, err
    assert f"http://127.0.0.1:{served['port']}" in err
    info = TestClient(served["app"]).get("/api/info").json()
    assert (info["split"], info["queries"], info["doc_expansions"], info["agent"]) == ("test", 1, 2, None)


def test_cli_demo_errors(beir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "demo", "--data", tmp_path / "nowhere", "--port", 0)
    assert code == 2 and "data not found" in err and "Traceback" not in err
    taken = bind("127.0.0.1", 0)
    try:
        code, _, err = run_cli(capsys, "demo", "--data", beir, "--port", taken.getsockname()[1])
    finally:
        taken.close()
    assert code == 2 and "cannot listen on 127.0.0.1" in err and "--port" in err


# --------------------------------------------------------------------------------------
# in a real browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    candidate = os.environ.get("SEARCHRL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return candidate if candidate and Path(candidate).exists() else None


class ServerThread:
    """The app served by uvicorn from a thread, on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the demo server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def browser_missing(reason: str) -> None:
    """Skip, or fail where the browser test must run (CI sets SEARCHRL_REQUIRE_BROWSER=1)."""
    (pytest.fail if os.environ.get("SEARCHRL_REQUIRE_BROWSER") == "1" else pytest.skip)(reason)


@pytest.mark.browser
def test_page_in_chromium(beir, agent_run, tmp_path):
    try:
        import playwright.sync_api as playwright_api
    except ImportError:
        browser_missing("playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        browser_missing("chromium is not installed (apt-get install -y chromium)")
    demo = load_demo(beir, model=agent_run)
    script_the_agent(demo)
    screenshot = tmp_path / "demo.png"

    with ServerThread(create_app(demo)) as server, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(10_000)
            page.goto(server.url)
            expect = playwright_api.expect
            expect.set_options(timeout=10_000)  # a loaded CI machine may be slow; passing runs take well under a second
            expect(page.locator("#info")).to_contain_text("6 documents")

            # retrieval side by side: a typed query
            page.fill("#query", "fuel cells")
            page.click("#compare")
            expect(page.locator("#col-bm25 li.result").first).to_have_attribute("data-doc", "d2")
            expect(page.locator("#compare-status")).to_contain_text("not judged")

            # a query picked from the split
            page.select_option("#query-pick", "q1")
            bm25, expanded = page.locator("#col-bm25 li.result"), page.locator("#col-expanded li.result")
            expect(expanded.first).to_have_attribute("data-doc", "d1")
            assert bm25.count() >= 1 and expanded.count() >= 1
            top = expanded.first
            expect(top).to_have_class("result relevant")
            expect(top.locator(".badge.rel")).to_have_text("relevant (2)")
            expect(top.locator(".badge.new")).to_have_text("new")
            expect(top.locator(".expansion")).to_contain_text("power loss oxygen explosion")
            assert page.locator("#col-bm25 li.result.relevant").count() == 0  # BM25 alone misses it
            expect(page.locator("#col-expanded h3")).to_contain_text("nDCG@10 1.000")
            # Fuel cells: first with BM25, fourth with expansions; both columns say it lost three places
            for column in ("#col-bm25", "#col-expanded"):
                expect(page.locator(f'{column} li[data-doc="d2"] .badge.down')).to_have_text("▼3")
            expect(page.locator("#compare-status")).to_contain_text("oxygen tank exploded")

            # the agent
            page.fill("#question", QUESTION)
            page.click("#ask")
            expect(page.locator("#final .answer-text")).to_have_text("oxygen tank two")
            expect(page.locator("#final")).to_contain_text("finished: answered")
            expect(page.locator("#final .sources li").first).to_have_attribute("data-doc", "d1")
            transcript = page.locator("#transcript")
            expect(transcript.locator(".search-q")).to_have_text("oxygen tank crew")
            expect(transcript.locator(".turn.results pre")).to_contain_text("[1] Oxygen tank")
            expect(transcript.locator(".think")).to_contain_text("The tank, probably.")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
