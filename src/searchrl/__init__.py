"""searchrl: reinforcement learning that makes LLMs better at search.

Two systems share one search environment:

* query/document co-augmentation (``searchrl.coaug``): one LLM expands queries and
  documents in front of BM25 or a dense retriever, trained with a sampled in-batch nDCG reward;
* a retrying search agent (``searchrl.agent``): ``<search>``/``<answer>`` episodes trained with
  GRPO and a reward that pays for searching again after a failed search.

The entry points, imported on first use so that ``import searchrl`` stays light::

    from searchrl import Agent, train_agent, train_coaug
    run_dir = searchrl.train_coaug_from_yaml("coaug-cpu")           # or train_coaug(CoAugConfig(...))
    answer = Agent.from_checkpoint(run_dir / "best", data="...").ask("What failed on Apollo 13?")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from searchrl.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY_EXPORTS: dict[str, str] = {
    "Agent": "searchrl.agent.api",
    "AgentAnswer": "searchrl.agent.api",
    "train_coaug": "searchrl.coaug.train",
    "train_coaug_from_yaml": "searchrl.coaug.train",
    "train_agent": "searchrl.agent.train",
    "train_agent_from_yaml": "searchrl.agent.train",
}
"""Public name -> its module, imported when the name is first used."""

__all__ = ["__version__", *_LAZY_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from searchrl.agent.api import Agent, AgentAnswer
    from searchrl.agent.train import train_agent, train_agent_from_yaml
    from searchrl.coaug.train import train_coaug, train_coaug_from_yaml


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY_EXPORTS)
