"""A ReZero-style search agent: ``<search>``/``<answer>`` episodes, a noisy search tool, rewards, a judge.

* :mod:`~searchrl.agent.protocol` — the tags, the system prompt and the turn parser;
* :mod:`~searchrl.agent.tool` — :class:`SearchTool` over any retriever, with :mod:`~searchrl.agent.noise`;
* :mod:`~searchrl.agent.episode` — :func:`run_episodes`, batched, with token ids and loss masks;
* :mod:`~searchrl.agent.rewards` — correctness, format, retry and retrieval rewards (TRL-ready);
* :mod:`~searchrl.agent.judge` — a fixed LLM judge with strict YES/NO parsing;
* :mod:`~searchrl.agent.evaluate` — :func:`evaluate_agent` behind ``searchrl agent eval``;
* :mod:`~searchrl.agent.api` — :class:`Agent` (``Agent.from_checkpoint(RUN/best).ask(question)``) behind
  ``searchrl agent ask`` and ``searchrl agent eval``.
"""
