"""searchrl: reinforcement learning that makes LLMs better at search.

Two systems share one search environment:

* query/document co-augmentation (``searchrl.coaug``): one LLM expands queries and
  documents in front of BM25 or a dense retriever, trained with a sampled in-batch nDCG reward;
* a retrying search agent (``searchrl.agent``): ``<search>``/``<answer>`` episodes trained with
  GRPO and a reward that pays for searching again after a failed search.
"""

__version__ = "0.1.0"
