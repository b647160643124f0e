"""Retrievers: BM25 analysis and ranking, dense search and its embedding cache, RRF, save/load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from searchrl.data import Document
from searchrl.errors import ConfigError, DataError, IndexFileError
from searchrl.retrieval import (
    BM25Analyzer,
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    build_retriever,
    load_retriever,
    reciprocal_rank_fusion,
)
from searchrl.retrieval.base import top_k_rows, write_manifest

CORPUS = [
    Document("d1", "Vitamin D deficiency is associated with bone fractures in elderly patients.", "Vitamin D and bones"),
    Document("d2", "Aspirin lowers the risk of a second heart attack.", "Aspirin"),
    Document("d3", "The oxygen tank exploded and the crew used the lunar module as a lifeboat.", "Apollo 13"),
    Document("d4", "Running improves cardiovascular health; runners have fewer heart problems.", "Exercise"),
    Document("d5", "Mitochondria produce energy in the cell.", ""),
]


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever().index(CORPUS, show_progress=False)


def ids(hits):
    return [doc_id for doc_id, _ in hits]


# ---------------------------------------------------------------------------------------
# BM25 analysis


def test_analyzer_lowercases_drops_stopwords_and_stems():
    assert BM25Analyzer().tokenize(["The Runners were RUNNING to the studies", ""]) == [
        ["runner", "were", "run", "studi"],
        [],
    ]
    assert BM25Analyzer(stemmer=None, stopwords=None).tokenize(["The runners"]) == [["the", "runners"]]
    assert BM25Analyzer(stopwords=["runners"], stemmer=None).tokenize(["the runners"]) == [["the"]]


def test_analyzer_matches_bm25s_tokenize():
    import bm25s
    import Stemmer

    texts = [doc.title + " " + doc.text for doc in CORPUS] + ["Ünïcode café naïve 42 x"]
    expected = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False)
    assert BM25Analyzer().tokenize(texts) == expected


def test_analyzer_rejects_unknown_languages_and_bare_strings():
    with pytest.raises(ConfigError, match="stemmer"):
        BM25Analyzer(stemmer="klingon")
    with pytest.raises(ConfigError, match="stop word"):
        BM25Analyzer(stopwords="klingon")
    with pytest.raises(ConfigError, match="single string"):
        BM25Analyzer().tokenize("a text")


# ---------------------------------------------------------------------------------------
# BM25 ranking


def test_document_sharing_rare_terms_ranks_first(bm25):
    hits = bm25.search(["vitamin deficiency fractures", "heart attack aspirin", "oxygen lifeboat"], k=3)
    assert [h[0][0] for h in hits] == ["d1", "d2", "d3"]
    assert all(h[0][1] > 0 for h in hits)
    # "heart" appears in d2 and d4; the rarer "aspirin" decides.
    assert ids(hits[1])[:2] == ["d2", "d4"]


def test_scores_equal_bm25s_retrieve(bm25):
    import bm25s

    queries = ["heart health running", "cell energy", "bone bone vitamin"]
    tokens = bm25.analyzer.tokenize(queries)
    reference = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    reference.index(bm25.analyzer.tokenize([f"{d.title} {d.text}" for d in CORPUS]), show_progress=False)
    documents, scores = reference.retrieve(tokens, k=len(CORPUS), show_progress=False)
    for hits, docs_row, scores_row in zip(bm25.search(queries, k=len(CORPUS)), documents, scores):
        expected = {CORPUS[i].id: s for i, s in zip(docs_row, scores_row) if s > 0}
        assert dict(hits) == pytest.approx(expected, rel=1e-5)


def test_stemming_matches_inflections_and_can_be_turned_off():
    stemmed = BM25Retriever().index(CORPUS, show_progress=False)
    plain = BM25Retriever(stemmer=None).index(CORPUS, show_progress=False)
    assert ids(stemmed.search(["runs"], k=5)[0]) == ["d4"]
    assert plain.search(["runs"], k=5) == [[]]


def test_stopwords_unknown_terms_and_empty_queries_return_no_hits(bm25):
    assert bm25.search(["the of and", "xylophone zebra", "", "!!"], k=5) == [[], [], [], []]
    # With stop words kept, "the" is a term like any other.
    keep = BM25Retriever(stopwords=None).index(CORPUS, show_progress=False)
    assert set(ids(keep.search(["the"], k=5)[0])) == {"d2", "d3", "d5"}


def test_k_larger_than_corpus_and_bad_k(bm25):
    hits = bm25.search(["heart"], k=1000)[0]
    assert ids(hits) == ["d2", "d4"] or ids(hits) == ["d4", "d2"]
    assert len(bm25.search(["the cell energy heart vitamin oxygen running"], k=1000)[0]) == 5
    assert len(bm25.search(["heart"], k=1)[0]) == 1
    assert bm25.search([], k=3) == []
    with pytest.raises(ConfigError):
        bm25.search(["heart"], k=0)
    with pytest.raises(ConfigError, match="single string"):
        bm25.search("heart", k=3)


def test_expansions_change_the_ranking():
    query = ["photosynthesis chlorophyll"]
    plain = BM25Retriever().index(CORPUS, show_progress=False)
    assert plain.search(query, k=5) == [[]]
    expanded = BM25Retriever().index(CORPUS, {"d5": "photosynthesis in chloroplasts uses chlorophyll"}, show_progress=False)
    assert ids(expanded.search(query, k=5)[0]) == ["d5"]


def test_idf_and_document_frequencies(bm25):
    df = bm25.document_frequencies()
    assert df["heart"] == 2 and df["aspirin"] == 1
    assert "the" not in df  # stop word
    n = len(CORPUS)
    expected = [np.log(1 + (n - 2 + 0.5) / 2.5), np.log(1 + (n - 1 + 0.5) / 1.5), np.log(1 + (n + 0.5) / 0.5)]
    np.testing.assert_allclose(bm25.idf(["heart", "aspirin", "unseenword"]), expected, rtol=1e-6)
    assert bm25.num_documents == 5 and bm25.average_document_length > 3
    assert set(bm25.vocabulary) == set(df)


def test_bad_corpora_are_rejected():
    with pytest.raises(DataError, match="duplicate"):
        BM25Retriever().index([Document("a", "x y"), Document("a", "z w")], show_progress=False)
    with pytest.raises(DataError, match="no documents"):
        BM25Retriever().index([], show_progress=False)
    with pytest.raises(DataError, match="indexable"):
        BM25Retriever().index([Document("a", "the of"), Document("b", "")], show_progress=False)
    with pytest.warns(UserWarning, match="1 of 2 document expansions"):
        BM25Retriever().index(CORPUS, {"d1": "more", "nope": "x"}, show_progress=False)
    with pytest.raises(IndexFileError, match="no index"):
        BM25Retriever().search(["x"])


def test_bm25_save_load_round_trip(bm25, tmp_path):
    bm25.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "retriever.json").read_text())
    assert manifest["kind"] == "bm25" and manifest["doc_ids"] == [d.id for d in CORPUS]
    assert manifest["params"]["k1"] == 1.2 and manifest["params"]["stemmer"] == "english"
    assert not list((tmp_path / "index").rglob("*.pkl"))
    loaded = load_retriever(tmp_path / "index")
    assert isinstance(loaded, BM25Retriever)
    queries = ["heart attack", "vitamin bone", "the", "oxygen tank crew"]
    assert loaded.search(queries, k=4) == bm25.search(queries, k=4)
    assert loaded.document_frequencies() == bm25.document_frequencies()
    assert loaded.average_document_length == bm25.average_document_length


# ---------------------------------------------------------------------------------------
# Top-k and reciprocal-rank fusion


def test_top_k_rows_orders_scores_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [1.0, 1.0, 1.0, 1.0]])
    indices, values = top_k_rows(scores, 3)
    assert indices.tolist() == [[1, 3, 2], [0, 1, 2]]
    assert values.tolist() == [[0.9, 0.9, 0.5], [1.0, 1.0, 1.0]]
    assert top_k_rows(scores, 10)[0].shape == (2, 4)


def test_reciprocal_rank_fusion_on_hand_made_rankings():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], rrf_k=60)
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62) and scores["d"] == pytest.approx(1 / 63)
    assert ids(fused) == ["a", "c", "b", "d"]
    # Ties (b and x both at rank 2 of one list) are ordered by id.
    assert ids(reciprocal_rank_fusion([["a", "x"], ["a", "b"]])) == ["a", "b", "x"]
    assert reciprocal_rank_fusion([[], []]) == []
    assert ids(reciprocal_rank_fusion([["z"]], rrf_k=0)) == ["z"]


def test_hybrid_fuses_members_and_round_trips(tmp_path):
    hybrid = HybridRetriever([BM25Retriever(), BM25Retriever(stemmer=None)], depth=3).index(CORPUS, show_progress=False)
    queries = ["running heart", "runs", "vitamin"]
    hits = hybrid.search(queries, k=2)
    # Both members rank d4 then d2 for the first query.
    assert hits[0] == [("d4", pytest.approx(2 / 61)), ("d2", pytest.approx(2 / 62))]
    # "runs" matches d4 only through the stemmed member: one list, rank 1.
    assert hits[1] == [("d4", pytest.approx(1 / 61))]
    assert ids(hits[2]) == ["d1"]
    hybrid.save(tmp_path / "hybrid")
    assert (tmp_path / "hybrid" / "0-bm25" / "retriever.json").exists()
    loaded = load_retriever(tmp_path / "hybrid")
    assert isinstance(loaded, HybridRetriever) and loaded.depth == 3
    assert loaded.search(queries, k=2) == hits
    with pytest.raises(ConfigError, match="at least two"):
        HybridRetriever([BM25Retriever()])


# ---------------------------------------------------------------------------------------
# Dense retrieval (tiny random encoder)


class CountingEncoder:
    """Wraps a SentenceTransformer and counts the texts it is asked to encode."""

    def __init__(self, retriever: DenseRetriever) -> None:
        self.inner = retriever.encoder
        self.texts: list[str] = []
        self.inner_encode = self.inner.encode
        self.inner.encode = self.encode

    def encode(self, texts, **kwargs):
        self.texts.extend(texts)
        return self.inner_encode(texts, **kwargs)


@pytest.fixture
def dense(tiny_st_dir, tmp_path) -> DenseRetriever:
    return DenseRetriever(model=tiny_st_dir, cache_dir=tmp_path / "cache", batch_size=8)


def test_dense_finds_a_document_from_its_own_text(dense):
    dense.index(CORPUS, show_progress=False)
    queries = [f"{d.title} {d.text}".strip() for d in CORPUS]
    hits = dense.search(queries, k=3)
    assert [h[0][0] for h in hits] == [d.id for d in CORPUS]
    assert hits[0][0][1] == pytest.approx(1.0, abs=1e-4)  # normalised: cosine of identical texts
    norms = np.linalg.norm(dense.embeddings, axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert len(dense.search(["anything"], k=100)[0]) == len(CORPUS)


def test_embedding_cache_encodes_only_new_texts(tiny_st_dir, tmp_path):
    cache = tmp_path / "cache"
    first = DenseRetriever(model=tiny_st_dir, cache_dir=cache)
    counter = CountingEncoder(first)
    first.index(CORPUS, show_progress=False)
    assert len(counter.texts) == len(CORPUS)
    assert first.last_index_stats == {"texts": 5, "encoded": 5, "cached": 0}

    second = DenseRetriever(model=tiny_st_dir, cache_dir=cache)
    counter = CountingEncoder(second)
    second.index(CORPUS, show_progress=False)
    assert counter.texts == []
    np.testing.assert_array_equal(second.embeddings, first.embeddings)

    # One document gains an expansion: only that text is encoded again.
    second.index(CORPUS, {"d3": "spacecraft emergency"}, show_progress=False)
    assert counter.texts == ["Apollo 13 The oxygen tank exploded and the crew used the lunar module as a lifeboat. spacecraft emergency"]

    # A passage prefix is part of the key: everything is new.
    prefixed = DenseRetriever(model=tiny_st_dir, cache_dir=cache, passage_prefix="passage: ")
    counter = CountingEncoder(prefixed)
    prefixed.index(CORPUS, show_progress=False)
    assert len(counter.texts) == 5 and all(t.startswith("passage: ") for t in counter.texts)
    assert {p.suffix for p in cache.rglob("shard-*")} == {".npy", ".json"}


def test_damaged_cache_shards_are_re_encoded(tiny_st_dir, tmp_path):
    cache = tmp_path / "cache"
    reference = DenseRetriever(model=tiny_st_dir, cache_dir=cache).index(CORPUS, show_progress=False)
    for shard in cache.rglob("shard-*.npy"):
        shard.write_bytes(b"not an array")
    again = DenseRetriever(model=tiny_st_dir, cache_dir=cache)
    counter = CountingEncoder(again)
    again.index(CORPUS, show_progress=False)
    assert len(counter.texts) == len(CORPUS)
    np.testing.assert_allclose(again.embeddings, reference.embeddings, rtol=1e-5, atol=1e-6)


def test_dense_save_load_round_trip(dense, tmp_path):
    dense.index(CORPUS, {"d1": "sunlight"}, show_progress=False)
    dense.save(tmp_path / "dense")
    loaded = load_retriever(tmp_path / "dense")
    assert isinstance(loaded, DenseRetriever) and loaded.batch_size == 8
    queries = ["heart attack", "oxygen tank", "energy"]
    assert loaded.search(queries, k=3) == dense.search(queries, k=3)

    # An index opened with a different encoder than it was built with is refused.
    manifest_path = tmp_path / "dense" / "retriever.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["params"]["encoder_fingerprint"] = "0" * 64
    write_manifest(tmp_path / "dense", "dense", manifest["params"], manifest["doc_ids"], list(manifest["files"]))
    with pytest.raises(IndexFileError, match="different version of the encoder"):
        load_retriever(tmp_path / "dense").search(["x"])


def test_build_retriever_factory(tiny_st_dir, tmp_path):
    assert isinstance(build_retriever("bm25", k1=0.9, b=0.4), BM25Retriever)
    dense = build_retriever("dense", model=tiny_st_dir, query_prefix="query: ", cache_dir=False)
    assert isinstance(dense, DenseRetriever) and dense.query_prefix == "query: "
    hybrid = build_retriever("hybrid", model=tiny_st_dir, k1=0.9, batch_size=4, rrf_k=10, cache_dir=tmp_path)
    assert isinstance(hybrid, HybridRetriever) and hybrid.rrf_k == 10
    assert hybrid.retrievers[0].k1 == 0.9 and hybrid.retrievers[1].batch_size == 4
    hybrid.index(CORPUS, show_progress=False)
    assert ids(hybrid.search(["aspirin heart attack"], k=1)[0]) == ["d2"]
    with pytest.raises(ConfigError, match="unknown retriever kind"):
        build_retriever("splade")
    with pytest.raises(ConfigError, match="unknown option"):
        build_retriever("bm25", k3=1.0)
    with pytest.raises(ConfigError, match="no model"):
        build_retriever("bm25", model="x")


# ---------------------------------------------------------------------------------------
# Bad index directories


def test_load_errors_name_the_problem(bm25, tmp_path):
    with pytest.raises(IndexFileError, match="not found") as err:
        load_retriever(tmp_path / "missing")
    assert err.value.hint and "searchrl index" in err.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFileError, match="retriever.json is missing"):
        load_retriever(tmp_path / "empty")

    bm25.save(tmp_path / "good")
    manifest_path = tmp_path / "good" / "retriever.json"
    original = manifest_path.read_text()

    def broken(name, change):
        target = tmp_path / name
        shutil.copytree(tmp_path / "good", target)
        change(target)
        return target

    corrupt = broken("corrupt", lambda d: (d / "retriever.json").write_text("{not json"))
    with pytest.raises(IndexFileError, match="corrupt index manifest"):
        load_retriever(corrupt)

    def set_field(key, value):
        def change(d):  # with fresh checksums, as a crafted manifest would have
            manifest = json.loads(original)
            manifest[key] = value
            write_manifest(d, manifest["kind"], manifest["params"], manifest["doc_ids"], list(manifest["files"]))

        return change

    def set_version(d):
        manifest = json.loads(original)
        manifest["version"] = 99
        (d / "retriever.json").write_text(json.dumps(manifest))

    with pytest.raises(IndexFileError, match="version 99"):
        load_retriever(broken("future", set_version))
    with pytest.raises(IndexFileError, match="unknown retriever kind"):
        load_retriever(broken("kind", set_field("kind", "splade")))
    with pytest.raises(IndexFileError, match="holds 5 documents"):
        load_retriever(broken("count", set_field("doc_ids", ["d1"])))
    with pytest.raises(IndexFileError, match="index file is missing"):
        load_retriever(broken("payload", lambda d: shutil.rmtree(d / "bm25s")))
    with pytest.raises(IndexFileError, match="not 'dense'"):
        DenseRetriever.load(tmp_path / "good")


def test_dense_load_errors(dense, tmp_path):
    dense.index(CORPUS, show_progress=False)
    dense.save(tmp_path / "dense")
    manifest = json.loads((tmp_path / "dense" / "retriever.json").read_text())

    def reseal():
        write_manifest(tmp_path / "dense", "dense", manifest["params"], manifest["doc_ids"], list(manifest["files"]))

    (tmp_path / "dense" / "embeddings.npy").write_bytes(b"garbage")
    with pytest.raises(IndexFileError, match="does not match its checksum"):
        load_retriever(tmp_path / "dense")
    reseal()
    with pytest.raises(IndexFileError, match="cannot read the document embeddings"):
        load_retriever(tmp_path / "dense")
    np.save(tmp_path / "dense" / "embeddings.npy", np.zeros((2, 4), dtype=np.float32))
    reseal()
    with pytest.raises(IndexFileError, match="do not match"):
        load_retriever(tmp_path / "dense")
