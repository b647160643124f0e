"""The retrieval server, remote retrieval as the agent's tool, and the agent as an OpenAI-compatible service.

Every server here is real: uvicorn on a free port in a thread of the test process, spoken to
over HTTP with httpx or the official openai client.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from searchrl.agent.episode import EpisodeConfig, ScriptedPolicy, run_episodes
from searchrl.agent.evaluate import evaluate_agent
from searchrl.agent.rewards import correctness_reward, episode_rewards, format_reward, retrieval_reward, retry_reward
from searchrl.agent.tool import SearchTool, SearchToolConfig, build_search_tool
from searchrl.cli import main
from searchrl.data.types import Document, QAExample
from searchrl.errors import ConfigError, ToolError
from searchrl.retrieval import build_retriever
from searchrl.retrieval.base import Retriever
from searchrl.retrieval.remote import RemoteRetriever
from searchrl.serve import agent as agent_server
from searchrl.serve import retriever as retriever_server
from searchrl.serve.http import BackgroundServer, bind_socket

CORPUS = {
    "c1": Document("c1", "The number two oxygen tank exploded at 55 hours.", "Oxygen tank"),
    "c2": Document("c2", "Jim Lovell commanded Apollo 13.", "Crew"),
    "c3": Document("c3", "The crew used the lunar module as a lifeboat.", "Lifeboat"),
    "c4": Document("c4", "Splashdown in the Pacific Ocean ended the mission.", ""),
}
Q_CMD = QAExample("q1", "Who commanded Apollo 13?", ("Jim Lovell",), ("c2",))
Q_TANK = QAExample("q2", "Which tank exploded?", ("oxygen tank",), ("c1",))
Q_BOAT = QAExample("q3", "What served as a lifeboat?", ("lunar module",), ("c3",))
SCRIPTS = {
    Q_CMD.question: ["<think>look up</think><search>commanded Apollo</search>", "<answer>Jim Lovell</answer>"],
    Q_TANK.question: ["<search>tank</search>", "<search>oxygen tank exploded</search>", "<answer>oxygen tank</answer>"],
    Q_BOAT.question: ["<search>lunar module lifeboat</search>", "<answer>the lunar module</answer>"],
}


@pytest.fixture(scope="module")
def tokenizer():
    from searchrl.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def bm25():
    return build_retriever("bm25").index(CORPUS.values(), show_progress=False)


@pytest.fixture(scope="module")
def server(bm25):
    with BackgroundServer(retriever_server.create_app(bm25, CORPUS)) as running:
        yield running


def free_port_url() -> str:
    """A URL nothing listens on."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def write_beir(folder, corpus=CORPUS):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in corpus.values())
    )
    questions = folder / "questions.jsonl"
    questions.write_text("".join(
        json.dumps({"id": q.id, "question": q.question, "answers": list(q.answers), "gold_ids": list(q.gold_ids)}) + "\n"
        for q in (Q_CMD, Q_TANK, Q_BOAT)
    ))
    return questions


class FailingRetriever(Retriever):
    """Indexes nothing and fails every search."""

    name = "failing"

    def __init__(self):
        self.calls = 0

    def index(self, documents, doc_expansions=None, *, show_progress=True):
        return self

    def search(self, queries, k=10, *, show_progress=False):
        self.calls += 1
        raise OSError("index file vanished")

    def save(self, directory):
        raise NotImplementedError

    @classmethod
    def load(cls, directory):
        raise NotImplementedError

    @property
    def doc_ids(self):
        return []


# ----------------------------------------------------------------------------------------
# The retrieval server


def test_retrieve_answers_search_r1_schema_with_and_without_scores(server, bm25):
    body = {"queries": ["oxygen tank", "Splashdown Pacific"], "topk": 2, "return_scores": True}
    answer = httpx.post(server.url + "/retrieve", json=body).json()
    assert list(answer) == ["result"] and len(answer["result"]) == 2
    expected = bm25.search(body["queries"], k=2)
    for items, hits in zip(answer["result"], expected):
        assert [(i["document"]["id"], i["score"]) for i in items] == [(d, float(s)) for d, s in hits]
        for item in items:
            assert set(item) == {"document", "score"}
            assert set(item["document"]) == {"id", "title", "text", "contents"}
    first = answer["result"][0][0]["document"]
    assert first == {"id": "c1", "title": "Oxygen tank", "text": CORPUS["c1"].text,
                     "contents": '"Oxygen tank"\nThe number two oxygen tank exploded at 55 hours.'}
    no_title = answer["result"][1][0]["document"]
    assert no_title["id"] == "c4" and no_title["contents"] == '""\n' + CORPUS["c4"].text

    bare = httpx.post(server.url + "/retrieve", json={**body, "return_scores": False}).json()["result"]
    assert [[item["document"]["id"] for item in items] for items in bare] == [[d for d, _ in h] for h in expected]
    assert all(set(item) == {"document"} for items in bare for item in items)


def test_topk_null_is_the_default_and_an_empty_batch_is_empty(server):
    answer = httpx.post(server.url + "/retrieve", json={"queries": ["crew"], "topk": None, "return_scores": True}).json()
    assert len(answer["result"][0]) <= retriever_server.DEFAULT_TOPK
    assert httpx.post(server.url + "/retrieve", json={"queries": []}).json() == {"result": []}


def test_health_reports_the_corpus_and_limits(server):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["retriever"] == "bm25" and health["num_documents"] == len(CORPUS)
    assert health["max_topk"] >= 1 and health["max_queries"] >= 1


def test_requests_over_the_limits_get_clear_4xx_errors(bm25):
    limits = retriever_server.RetrieverLimits(max_queries=3, max_topk=5, max_query_chars=50, max_body_bytes=2048)
    with BackgroundServer(retriever_server.create_app(bm25, CORPUS, limits=limits)) as running:
        url = running.url + "/retrieve"

        def error(response, status):
            assert response.status_code == status, response.text
            message = response.json()["error"]["message"]
            assert message
            return message

        assert "at most 3" in error(httpx.post(url, json={"queries": ["a"] * 4, "topk": 1}), 413)
        assert "between 1 and 5" in error(httpx.post(url, json={"queries": ["a"], "topk": 6}), 422)
        assert "between 1 and 5" in error(httpx.post(url, json={"queries": ["a"], "topk": 0}), 422)
        assert "limit is 50" in error(httpx.post(url, json={"queries": ["word " * 20], "topk": 1}), 413)
        assert "2,048 bytes" in error(httpx.post(url, content=b"{" + b" " * 5000 + b"}"), 413)

        def chunks():  # no Content-Length: the server counts while reading
            for _ in range(10):
                yield b" " * 500

        assert "2,048 bytes" in error(httpx.post(url, content=chunks()), 413)
        assert "queries" in error(httpx.post(url, json={"queries": "oxygen tank"}), 422)  # a string, not a list
        assert "queries" in error(httpx.post(url, json={"topk": 2}), 422)
        error(httpx.post(url, json={"queries": [1, 2]}), 422)
        error(httpx.post(url, content=b"not json", headers={"content-type": "application/json"}), 422)
        form = httpx.post(url, content=b'{"queries": ["a"]}', headers={"content-type": "application/x-www-form-urlencoded"})
        assert "Content-Type: application/json" in error(form, 422)  # what `curl -d` sends without -H
        assert httpx.get(running.url + "/nowhere").status_code == 404
        assert httpx.post(url, json={"queries": ["oxygen"], "topk": 5}).status_code == 200  # within the limits


def test_a_failing_back_end_is_a_500_never_an_empty_result():
    failing = FailingRetriever()
    with BackgroundServer(retriever_server.create_app(failing, CORPUS)) as running:
        response = httpx.post(running.url + "/retrieve", json={"queries": ["oxygen"], "topk": 2})
        assert response.status_code == 500
        assert "result" not in response.json()
        assert "index file vanished" in response.json()["error"]["message"]
        # the client does not retry a back-end error: one call, then a ToolError
        with pytest.raises(ToolError, match="index file vanished"):
            RemoteRetriever(running.url, backoff=0.01).search(["oxygen"], k=2)
        assert failing.calls == 2


def test_concurrent_requests_each_get_their_own_results(server, bm25):
    queries = ["oxygen tank", "Jim Lovell", "lunar module", "Pacific splashdown"] * 4
    answers: dict[int, list] = {}

    def ask(i):
        response = httpx.post(server.url + "/retrieve", json={"queries": [queries[i]], "topk": 2, "return_scores": True})
        answers[i] = [(x["document"]["id"], x["score"]) for x in response.json()["result"][0]]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, query in enumerate(queries):
        assert answers[i] == [(d, float(s)) for d, s in bm25.search([query], k=2)[0]]


def test_server_refuses_an_index_that_is_not_the_corpus(bm25):
    with pytest.raises(ConfigError, match="not in the corpus"):
        retriever_server.create_app(bm25, {"c1": CORPUS["c1"]})


@pytest.mark.slow
def test_served_ids_and_scores_equal_searchrl_search_json(shared_data, tmp_path, capsys, monkeypatch):
    """`searchrl serve retriever` on SciFact answers what `searchrl search --json` prints, score for score."""
    scifact = shared_data / "scifact"
    queries = [json.loads(line)["text"] for line in (scifact / "queries.jsonl").read_text().splitlines()[:5]]
    main(["index", "--data", str(scifact), "--out", str(tmp_path / "index")])
    expected = []
    for query in queries:
        capsys.readouterr()
        main(["search", "--index", str(tmp_path / "index"), "-k", "10", "--json", query])
        expected.append([(r["id"], r["score"]) for r in json.loads(capsys.readouterr().out)["results"]])

    for extra in ([], ["--index", str(tmp_path / "index")]):  # built by the server, and a saved index
        with serve_from_cli(monkeypatch, ["serve", "retriever", "--data", str(scifact), "--port", "0", *extra]) as url:
            answer = httpx.post(url + "/retrieve", json={"queries": queries, "topk": 10, "return_scores": True}).json()
            served = [[(x["document"]["id"], x["score"]) for x in items] for items in answer["result"]]
            assert served == expected
            assert httpx.get(url + "/health").json()["num_documents"] == 5183


class serve_from_cli:
    """Run a `searchrl serve ...` command with the server in a thread; yields its URL."""

    def __init__(self, monkeypatch, argv):
        import searchrl.serve.http

        self.servers = []

        def serve_in_background(app, host, port, **_):
            self.servers.append(BackgroundServer(app, host, port).start())

        monkeypatch.setattr(searchrl.serve.http, "serve_forever", serve_in_background)
        self.argv = argv

    def __enter__(self):
        main(self.argv)
        return self.servers[-1].url

    def __exit__(self, *exc):
        self.servers[-1].stop()


def test_serve_retriever_cli_builds_with_expansions_and_rejects_bad_combinations(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_beir(data)
    expansions = tmp_path / "expansions.jsonl"
    expansions.write_text(json.dumps({"id": "c4", "expansion": "zeppelin"}) + "\n")
    argv = ["serve", "retriever", "--data", str(data), "--port", "0", "--doc-expansions", str(expansions)]
    with serve_from_cli(monkeypatch, argv) as url:
        hits = httpx.post(url + "/retrieve", json={"queries": ["zeppelin"], "topk": 1}).json()["result"][0]
        assert hits[0]["document"]["id"] == "c4"
        assert "zeppelin" not in hits[0]["document"]["text"]  # the expansion is indexed, not served
    main(["index", "--data", str(data), "--out", str(tmp_path / "index")])
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "retriever", "--data", str(data), "--index", str(tmp_path / "index"), "--doc-expansions", str(expansions)])
    assert exit_info.value.code == 2 and "--doc-expansions" in capsys.readouterr().err


def test_a_taken_port_is_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "data"
    write_beir(data)
    taken = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "retriever", "--data", str(data), "--port", str(taken.getsockname()[1])])
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "cannot listen on" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------
# The remote retriever


def test_remote_retriever_equals_the_local_one(server, bm25):
    remote = RemoteRetriever(server.url + "/retrieve")  # a trailing /retrieve is accepted
    queries = ["oxygen tank", "who commanded", "nothing matches zzz"]
    assert remote.search(queries, k=3) == [[(d, float(s)) for d, s in hits] for hits in bm25.search(queries, k=3)]
    assert remote.health()["num_documents"] == len(CORPUS)
    with pytest.raises(ConfigError):
        remote.search("oxygen", k=3)  # a bare string


def test_remote_retriever_splits_a_batch_at_the_servers_limit(bm25):
    limits = retriever_server.RetrieverLimits(max_queries=2)
    with BackgroundServer(retriever_server.create_app(bm25, CORPUS, limits=limits)) as running:
        remote = RemoteRetriever(running.url).check(CORPUS, k=2)
        queries = ["oxygen", "crew", "lifeboat", "Pacific", "tank"]
        assert remote.search(queries, k=2) == [[(d, float(s)) for d, s in h] for h in bm25.search(queries, k=2)]


def test_unreachable_server_is_a_tool_error_after_retries():
    started = time.perf_counter()
    remote = RemoteRetriever(free_port_url(), retries=2, backoff=0.05)
    with pytest.raises(ToolError, match="after 3 attempts") as info:
        remote.search(["oxygen"], k=2)
    assert "searchrl serve retriever" in info.value.format()
    assert time.perf_counter() - started >= 0.05 + 0.1  # backed off between attempts


def test_remote_retriever_retries_busy_answers_and_times_out():
    from fastapi import FastAPI

    app = FastAPI()
    calls = {"n": 0}

    @app.post("/retrieve")
    def flaky(body: dict):
        calls["n"] += 1
        if calls["n"] <= 2:
            from fastapi.responses import JSONResponse

            return JSONResponse({"error": {"message": "busy"}}, status_code=503)
        return {"result": [[{"document": {"id": "c1", "contents": '"t"\nx'}, "score": 1.5}] for _ in body["queries"]]}

    @app.post("/slow/retrieve")
    def slow(body: dict):
        time.sleep(1.0)
        return {"result": [[] for _ in body["queries"]]}

    with BackgroundServer(app) as running:
        assert RemoteRetriever(running.url, retries=2, backoff=0.01).search(["q"], k=1) == [[("c1", 1.5)]]
        assert calls["n"] == 3
        with pytest.raises(ToolError, match="no answer within 0.2 s"):
            RemoteRetriever(running.url + "/slow", timeout=0.2, retries=0).search(["q"], k=1)


def test_remote_retriever_rejects_documents_without_ids():
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/retrieve")
    def no_ids(body: dict):  # what Search-R1's BM25 server sends
        return {"result": [[{"document": {"contents": '"t"\nx'}, "score": 1.0}] for _ in body["queries"]]}

    with BackgroundServer(app) as running, pytest.raises(ToolError, match="document id"):
        RemoteRetriever(running.url).search(["q"], k=1)


# ----------------------------------------------------------------------------------------
# Remote retrieval as the agent's tool


def test_search_tool_with_a_server_url(server, monkeypatch):
    monkeypatch.setenv("SEARCHRL_RETRIEVER_RETRIES", "1")
    tool = build_search_tool(CORPUS, SearchToolConfig(retriever=server.url, k=2))
    assert tool.retrievers[server.url].retries == 1
    result = tool.search("oxygen tank")
    assert result.doc_ids[0] == "c1" and result.backend == server.url
    assert result.text.startswith("[1] Oxygen tank\n")
    with pytest.raises(ToolError, match="failed after 2 attempts"):
        build_search_tool(CORPUS, SearchToolConfig(retriever=free_port_url()))
    monkeypatch.setenv("SEARCHRL_RETRIEVER_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="SEARCHRL_RETRIEVER_TIMEOUT"):
        build_search_tool(CORPUS, SearchToolConfig(retriever=server.url))
    monkeypatch.delenv("SEARCHRL_RETRIEVER_TIMEOUT")
    with pytest.raises(ConfigError, match="serves 4 documents"):
        build_search_tool({"c1": CORPUS["c1"]}, SearchToolConfig(retriever=server.url))


def test_episodes_through_a_server_equal_local_ones_and_a_dead_server_is_a_tool_failure(bm25, tokenizer):
    policy = ScriptedPolicy(tokenizer, SCRIPTS)
    config = EpisodeConfig(max_turns=4)
    examples = [Q_CMD, Q_TANK, Q_BOAT]
    local = evaluate_agent(policy, SearchTool(bm25, CORPUS, k=2), examples, config)
    running = BackgroundServer(retriever_server.create_app(bm25, CORPUS)).start()
    try:
        tool = build_search_tool(CORPUS, SearchToolConfig(retriever=running.url, k=2))
        remote = evaluate_agent(policy, tool, examples, config)
    finally:
        running.stop()
    assert [r["messages"] for r in remote.records] == [r["messages"] for r in local.records]
    assert [[s["doc_ids"] for s in r["searches"]] for r in remote.records] == [
        [s["doc_ids"] for s in r["searches"]] for r in local.records
    ]
    assert remote.metrics["em"] == local.metrics["em"] == 1.0 and remote.metrics["tool_errors"] == 0

    tool.retrievers[running.url].retries = 0  # the server is gone now
    [episode] = run_episodes(policy, tool, [Q_CMD], config)
    assert episode.finish_reason == "tool_error" and "failed after" in episode.error
    assert correctness_reward(episode, Q_CMD.answers) is None
    assert format_reward(episode) is None and retry_reward(episode, Q_CMD.answers) is None
    assert retrieval_reward(episode, Q_CMD.gold_ids) is None
    assert episode_rewards(episode, Q_CMD.answers, Q_CMD.gold_ids) == dict.fromkeys(
        ("correctness", "format", "retry", "retrieval", "total")
    )
    report = evaluate_agent(policy, tool, [Q_CMD, Q_BOAT], config)
    assert report.metrics["tool_errors"] == 2 and report.metrics["em"] is None  # not scored as wrong


def test_training_config_builds_the_remote_tool(server, tmp_path):
    from searchrl.agent.train import build_tool, load_agent_config

    write_beir(tmp_path / "data")
    config = load_agent_config(None, [f"tool.retriever={server.url}", f"data.corpus={tmp_path / 'data' / 'corpus.jsonl'}"])
    tool = build_tool(config)
    assert isinstance(tool.retrievers[server.url], RemoteRetriever)
    assert tool.search("lunar module lifeboat").doc_ids[0] == "c3"


def test_agent_eval_cli_through_a_served_retriever_gives_the_local_transcripts(server, tiny_lm_dir, tmp_path, capsys):
    questions = write_beir(tmp_path / "data")
    common = ["agent", "eval", "--questions", str(questions), "--data", str(tmp_path / "data"), "--model", str(tiny_lm_dir),
              "--json", "--max-turns", "2", "--max-turn-tokens", "12", "--device", "cpu", "--k", "2"]
    main([*common, "--out", str(tmp_path / "local.jsonl")])
    local = json.loads(capsys.readouterr().out)
    main([*common, "--retriever", server.url, "--out", str(tmp_path / "remote.jsonl")])
    remote = json.loads(capsys.readouterr().out)
    assert remote["retriever"] == server.url and remote["tool_errors"] == 0
    for key in ("em", "f1", "answered_rate", "searches_per_episode", "finish_reasons"):
        assert remote[key] == local[key]

    def transcripts(name):
        records = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        return [(r["messages"], r["answer"], [s["doc_ids"] for s in r["searches"]]) for r in records]

    assert transcripts("remote.jsonl") == transcripts("local.jsonl")


def test_agent_cli_refuses_an_unknown_retriever(tmp_path, capsys):
    questions = write_beir(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        main(["agent", "eval", "--questions", str(questions), "--data", str(tmp_path / "data"), "--retriever", "bm26"])
    assert exit_info.value.code == 2 and "bm26" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# The agent as an OpenAI-compatible service


class SlowPolicy(ScriptedPolicy):
    """A scripted policy that takes a while per turn, so concurrent requests pile up."""

    def generate_turns(self, token_id_lists, params):
        time.sleep(0.3)
        return super().generate_turns(token_id_lists, params)


def openai_client(url):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_client_gets_the_agents_answer_transcript_and_sources(bm25, tokenizer):
    tool = SearchTool(bm25, CORPUS, k=2)
    app = agent_server.create_app(ScriptedPolicy(tokenizer, SCRIPTS), tool, EpisodeConfig(max_turns=4), model_name="apollo-agent")
    with BackgroundServer(app) as running:
        client = openai_client(running.url)
        assert [m.id for m in client.models.list().data] == ["apollo-agent"]
        response = client.chat.completions.create(
            model="apollo-agent",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": Q_CMD.question}],
        )
        assert response.object == "chat.completion" and response.model == "apollo-agent"
        choice = response.choices[0]
        assert choice.message.role == "assistant" and choice.message.content == "Jim Lovell"
        assert choice.finish_reason == "stop"
        details = response.model_extra["searchrl"]
        assert response.searchrl == details and details["answer"] == "Jim Lovell"
        assert details["finish_reason"] == "answered" and details["searches"][0]["query"] == "commanded Apollo"
        assert details["sources"][0] == {"id": "c2", "title": "Crew", "text": CORPUS["c2"].text}
        roles = [m["role"] for m in details["transcript"]]
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert details["transcript"][3]["content"].startswith("<information>")
        usage = response.usage
        assert usage.completion_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

        import openai

        with pytest.raises(openai.BadRequestError, match="streaming"):
            client.chat.completions.create(model="apollo-agent", messages=[{"role": "user", "content": "x"}], stream=True)
        with pytest.raises(openai.BadRequestError, match="no user message"):
            client.chat.completions.create(model="apollo-agent", messages=[{"role": "system", "content": "x"}])
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model="apollo-agent", messages=[])


def test_concurrent_chat_requests_are_batched_and_each_gets_its_own_answer(bm25, tokenizer):
    app = agent_server.create_app(SlowPolicy(tokenizer, SCRIPTS), SearchTool(bm25, CORPUS, k=2), EpisodeConfig(max_turns=4))
    questions = [Q_CMD, Q_TANK, Q_BOAT] * 2
    answers: dict[int, str] = {}
    with BackgroundServer(app) as running:
        client = openai_client(running.url)

        def ask(i):
            response = client.chat.completions.create(model="m", messages=[{"role": "user", "content": questions[i].question}])
            answers[i] = response.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
        for thread in threads:
            thread.start()
            time.sleep(0.02)
        for thread in threads:
            thread.join()
        batches = app.state.batcher.batches
    expected = {Q_CMD.question: "Jim Lovell", Q_TANK.question: "oxygen tank", Q_BOAT.question: "the lunar module"}
    assert [answers[i] for i in range(len(questions))] == [expected[q.question] for q in questions]
    assert batches < len(questions)  # requests that arrived while the model was busy shared a batch


def test_a_search_failure_is_a_502_not_an_answer(bm25, tokenizer):
    import openai

    running = BackgroundServer(retriever_server.create_app(bm25, CORPUS)).start()
    tool = build_search_tool(CORPUS, SearchToolConfig(retriever=running.url, k=2))
    running.stop()
    tool.retrievers[running.url].retries = 0
    app = agent_server.create_app(ScriptedPolicy(tokenizer, SCRIPTS), tool, EpisodeConfig(max_turns=4))
    with BackgroundServer(app) as agent:
        with pytest.raises(openai.InternalServerError, match="search failed") as info:
            openai_client(agent.url).chat.completions.create(model="m", messages=[{"role": "user", "content": Q_CMD.question}])
        assert info.value.status_code == 502


def test_serve_agent_cli_with_a_tiny_model_and_a_remote_retriever(server, tiny_lm_dir, tmp_path, monkeypatch):
    write_beir(tmp_path / "data")
    argv = ["serve", "agent", "--data", str(tmp_path / "data"), "--model", str(tiny_lm_dir), "--retriever", server.url,
            "--max-turns", "2", "--max-turn-tokens", "8", "--device", "cpu", "--port", "0", "--served-model-name", "tiny"]
    with serve_from_cli(monkeypatch, argv) as url:
        assert httpx.get(url + "/health").json()["retriever"] == server.url
        response = openai_client(url).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": [{"type": "text", "text": Q_CMD.question}]}]
        )
    assert response.model == "tiny" and isinstance(response.choices[0].message.content, str)
    details = response.model_extra["searchrl"]
    assert details["transcript"][1]["role"] == "user" and Q_CMD.question in details["transcript"][1]["content"]
    assert details["num_turns"] >= 1


def test_serve_commands_are_listed(capsys):
    try:
        main(["serve", "--help"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    help_text = capsys.readouterr().out
    assert "retriever" in help_text and "agent" in help_text


@pytest.mark.parametrize("module_name", ["searchrl.serve.http", "searchrl.serve.retriever", "searchrl.retrieval.remote"])
def test_docstring_examples_run(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name))
    assert result.attempted > 0 and result.failed == 0


def test_keep_alive_requests_are_not_held_back_by_nagle(server):
    """A server socket without TCP_NODELAY answers each keep-alive request ~40 ms late (delayed ACK)."""
    latencies = []
    with httpx.Client() as client:
        for _ in range(15):
            started = time.perf_counter()
            client.get(server.url + "/health")
            latencies.append(time.perf_counter() - started)
    assert sorted(latencies)[len(latencies) // 2] < 0.02
