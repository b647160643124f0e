"""Corpora, queries, qrels, runs and QA sets: BEIR folders, Hub data sets, Pyserini/FlashRAG/TREC files, text."""

from searchrl.data.beir import (
    BeirDataset,
    available_splits,
    iter_corpus,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)
from searchrl.data.expansions import load_expansions, write_expansions
from searchrl.data.formats import CORPUS_FORMATS, detect_corpus_format, read_trec_run, write_trec_run
from searchrl.data.hub import hub_beir_folder, is_hub_reference
from searchrl.data.io import iter_jsonl, open_text, resolve_data_file
from searchrl.data.qa import load_qa
from searchrl.data.text import chunk_text, load_text_corpus
from searchrl.data.types import Document, QAExample, Qrels, Run, document_text, query_text

__all__ = [
    "BeirDataset",
    "CORPUS_FORMATS",
    "Document",
    "QAExample",
    "Qrels",
    "Run",
    "available_splits",
    "chunk_text",
    "detect_corpus_format",
    "document_text",
    "hub_beir_folder",
    "is_hub_reference",
    "iter_corpus",
    "iter_jsonl",
    "load_beir",
    "load_corpus",
    "load_expansions",
    "load_qa",
    "load_qrels",
    "load_queries",
    "load_text_corpus",
    "open_text",
    "query_text",
    "read_trec_run",
    "resolve_data_file",
    "write_expansions",
    "write_trec_run",
]
