"""searchrl over HTTP: a Search-R1-compatible retrieval server and the agent as an OpenAI-compatible service.

* :mod:`searchrl.serve.retriever` — ``create_app(retriever, corpus)``: ``POST /retrieve``, ``GET /health``;
* :mod:`searchrl.serve.agent` — ``create_app(policy, tool, episode_config)``: ``POST /v1/chat/completions``,
  ``GET /v1/models``;
* :mod:`searchrl.serve.http` — what both share: JSON errors, a body-size limit, the batching queue
  in front of the back-end, and :class:`~searchrl.serve.http.BackgroundServer` to serve an app
  from a thread (tests, benchmarks, notebooks).

``searchrl serve retriever`` and ``searchrl serve agent`` start them; the client side of the
retrieval protocol is :class:`searchrl.retrieval.remote.RemoteRetriever`.
"""
