"""Corpora, queries, qrels and QA sets: loaders for BEIR folders, JSONL and text files."""

from searchrl.data.types import Document, QAExample, Qrels, Query, Run, document_text, query_text

__all__ = ["Document", "QAExample", "Qrels", "Query", "Run", "document_text", "query_text"]
