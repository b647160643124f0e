"""Query and document expansion: prompts, output parsing and resumable augmentation jobs.

One :class:`ExpansionPolicy` decides what an expansion is (prompt style, ``think``, word cap,
strict or lenient parsing, sampling); the CoAug trainer and ``searchrl augment`` share it, and
expansions are appended with :func:`searchrl.data.query_text` / :func:`searchrl.data.document_text`
in training and evaluation alike.
"""

from searchrl.augment.job import (
    CorpusAugmentationJob,
    ExpansionPolicy,
    augment_items,
    default_expansion_sampling,
    parse_shard,
    select_shard,
    shard_of,
)
from searchrl.augment.parse import REASONS, ParsedExpansion, parse_expansion
from searchrl.augment.prompts import build_expansion_prompt, expansion_prompt_template

__all__ = [
    "REASONS",
    "CorpusAugmentationJob",
    "ExpansionPolicy",
    "ParsedExpansion",
    "augment_items",
    "build_expansion_prompt",
    "default_expansion_sampling",
    "expansion_prompt_template",
    "parse_expansion",
    "parse_shard",
    "select_shard",
    "shard_of",
]
