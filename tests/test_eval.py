"""`cde-rag eval`: BEIR loading, exact search, metrics checked by hand, resume, CLI outputs."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from cde_rag import evaluation
from cde_rag.cli import main
from cde_rag.cli.eval import parse_baseline, parse_seeds
from cde_rag.evaluation import (
    DatasetError,
    check_metrics,
    doc_text,
    embed_in_chunks,
    evaluate,
    load_beir,
    score_run,
    search,
)

TOPICS = {
    "bread": "flour yeast dough oven crust knead loaf bake rye starter",
    "bikes": "bicycle tyre chain brake pedal wheel gear saddle spoke pump",
    "space": "planet orbit star telescope galaxy moon comet rocket nebula mars",
    "garden": "tomato compost soil seed prune rose water slug mulch hedge",
}


class HashingBagOfWords(Embeddings):
    """A real, if simple, embedder: word counts hashed into `dim` buckets, log-scaled.

    Queries and documents that share words get a high cosine, so on the dataset below it
    ranks each query's own document first; a fake (random or constant) embedder would not.
    """

    def __init__(self, dim: int = 512):
        self.dim = dim

    def _vector(self, text: str) -> list[float]:
        counts = np.zeros(self.dim)
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            counts[zlib.crc32(word.encode()) % self.dim] += 1
        return np.log1p(counts).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)

    def __repr__(self) -> str:
        return f"HashingBagOfWords(dim={self.dim})"


def make_dataset() -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    """Three documents per topic; each query uses the words unique to its topic's first
    document (judged 2); the topic's second document is judged 1."""
    docs, queries, qrels = [], [], []
    for t, (topic, words) in enumerate(TOPICS.items()):
        vocab = words.split()
        for j in range(3):
            own = f"{topic}{j}x {topic}{j}y"  # words only this document has
            text = " ".join(vocab[(j * 3 + i) % len(vocab)] for i in range(6)) + f" {own}"
            docs.append({"_id": f"{topic}-{j}", "title": f"{topic} notes {j}", "text": text})
        queries.append({"_id": f"q{t}", "text": f"{topic}0x {topic}0y {vocab[0]}"})
        qrels += [(f"q{t}", f"{topic}-0", 2), (f"q{t}", f"{topic}-1", 1)]
    queries.append({"_id": "unjudged", "text": "a query of another split"})
    qrels.append(("q0", "space-2", 0))  # judged not relevant: ignored by every metric
    return docs, queries, qrels


def write_beir(folder: Path, docs, queries, qrels, split: str = "test") -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in qrels)]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return write_beir(tmp_path / "toy", *make_dataset())


def ndcg_by_hand(ranking: list[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k with linear gain (trec_eval's): sum rel_i / log2(i + 1), over the ideal order."""
    dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def brute_force_top(model, ctx, data, k):
    """Independent of evaluate(): embed everything at once and sort all scores."""
    d = model.embed_documents(data.doc_texts, context=ctx)
    q = model.embed_queries(data.query_texts, context=ctx)
    order = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :k]
    return {qid: [data.doc_ids[i] for i in row] for qid, row in zip(data.query_ids, order)}


# -- metrics and search, no model -------------------------------------------------------------


def test_score_run_matches_hand_computed_values():
    qrels = {"q1": {"d3": 1}, "q2": {"a": 2, "b": 1}, "q3": {"z": 1}}
    run = {
        "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.1},  # the relevant one at rank 3
        "q2": {"b": 0.9, "x": 0.8, "a": 0.7},  # grade 1 first, grade 2 third
        "q3": {**{f"n{i}": 1 - i / 100 for i in range(10)}, "z": 0.05},  # relevant at rank 11
    }
    means, per_query = score_run(qrels, run, ["ndcg@10", "recall@10", "recall@100", "mrr@10"])
    # q1: DCG = 1/log2(4) = 0.5, IDCG = 1.  q2: DCG = 1/log2(2) + 2/log2(4) = 2,
    # IDCG = 2/log2(2) + 1/log2(3) = 2.63093.  q3: nothing in the top 10.
    q2_ndcg = 2 / (2 + 1 / math.log2(3))
    assert per_query["ndcg@10"] == pytest.approx({"q1": 0.5, "q2": q2_ndcg, "q3": 0.0})
    assert per_query["mrr@10"] == pytest.approx({"q1": 1 / 3, "q2": 1.0, "q3": 0.0})
    assert per_query["recall@10"] == pytest.approx({"q1": 1.0, "q2": 1.0, "q3": 0.0})
    assert per_query["recall@100"] == pytest.approx({"q1": 1.0, "q2": 1.0, "q3": 1.0})
    assert means["ndcg@10"] == pytest.approx((0.5 + q2_ndcg) / 3)
    assert means["mrr@10"] == pytest.approx((1 / 3 + 1) / 3)
    assert ndcg_by_hand(["b", "x", "a"], qrels["q2"]) == pytest.approx(q2_ndcg)


def test_search_is_exact_across_chunks_and_breaks_ties_by_position(monkeypatch):
    monkeypatch.setattr(evaluation, "QUERY_BLOCK", 4)  # 6 queries: two blocks
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(53, 16)).astype(np.float32)
    docs[40] = docs[7]  # an exact tie: position 7 must come first
    queries = np.concatenate([rng.normal(size=(5, 16)), docs[7:8]]).astype(np.float32)
    full = queries @ docs.T
    for chunk in (1, 7, 53, 100):
        chunks = [docs[i : i + chunk] for i in range(0, len(docs), chunk)]
        idx, scores = search(queries, chunks, k=10)
        assert idx.shape == (6, 10)
        np.testing.assert_array_equal(idx, np.argsort(-full, axis=1, kind="stable")[:, :10])
        np.testing.assert_allclose(scores, np.take_along_axis(full, idx, 1), rtol=1e-6)
        assert list(idx[5, :2]) == [7, 40]
    # Ten identical documents straddling the k-th place: the first five by position win.
    docs[20:30] = docs[3]
    idx, _ = search(docs[3:4], [docs[i : i + 3] for i in range(0, 53, 3)], k=5)
    assert list(idx[0]) == [3, 20, 21, 22, 23]
    idx, _ = search(queries, [docs[:3]], k=10)  # fewer documents than k
    assert idx.shape == (6, 3)


def test_saved_chunks_are_reused_and_a_damaged_one_is_recomputed(tmp_path):
    bow = HashingBagOfWords(dim=32)
    texts = [f"text number {i} about {TOPICS['space'].split()[i % 10]}" for i in range(10)]
    calls: list[list[str]] = []

    def embed(batch):
        calls.append(batch)
        return bow.embed_documents(batch)

    first = embed_in_chunks(texts, embed, folder=tmp_path, chunk_size=4)
    assert [len(c) for c in calls] == [4, 4, 2] and (first.computed, first.reused) == (10, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.npy", "000001.npy", "000002.npy"]
    expected = first.stacked()
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, rtol=1e-5)
    (tmp_path / "000001.npy").write_bytes(b"torn")
    calls.clear()
    again = embed_in_chunks(texts, embed, folder=tmp_path, chunk_size=4)
    assert calls == [texts[4:8]] and (again.computed, again.reused) == (4, 6)
    np.testing.assert_array_equal(again.stacked(), expected)
    with pytest.raises(evaluation.CDEError, match="one vector per text"):
        embed_in_chunks(texts, lambda batch: bow.embed_documents(batch[:-1]), folder=None)


def test_metric_and_option_checks():
    assert check_metrics(["NDCG@10", " mrr@10", "ndcg@10"], 100) == ["ndcg@10", "mrr@10"]
    with pytest.raises(ValueError, match=r"recall@100 needs the top 100.*only 10"):
        check_metrics(["recall@100"], 10)
    with pytest.raises(ValueError, match="Unknown metric"):
        check_metrics(["precisionn@5"], 100)
    assert parse_seeds("42, 1,2") == [42, 1, 2]
    for bad in ("42;1", "", "1,1", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated non-negative"):
            parse_seeds(bad)


def test_evaluate_refuses_empty_or_ambiguous_settings(tiny_model, data_dir):
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        evaluate(tiny_model, data_dir, seeds=[], fallback=False)
    with pytest.raises(ValueError, match="must be unique"):
        evaluate(
            tiny_model,
            data_dir,
            seeds=[],
            baselines={"fallback (random strings)": HashingBagOfWords()},
        )
    with pytest.raises(ValueError, match="distinct non-negative"):
        evaluate(tiny_model, data_dir, seeds=[1, 1])


def test_baseline_spec_builds_a_real_embeddings():
    name, emb = parse_baseline('bow=test_eval:HashingBagOfWords:{"dim": 64}')
    assert (name, type(emb).__name__, emb.dim) == ("bow", "HashingBagOfWords", 64)
    name, emb = parse_baseline("test_eval:HashingBagOfWords")
    assert (name, emb.dim) == ("HashingBagOfWords", 512)
    for spec, message in [
        ("HashingBagOfWords", "expected"),
        ("no_such_module_xyz:Thing", "cannot import"),
        ("test_eval:Nope", "has no Nope"),
        ("test_eval:HashingBagOfWords:{dim: 3}", "not JSON"),
        ('test_eval:HashingBagOfWords:{"size": 3}', "failed"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_baseline(spec)


# -- dataset loading --------------------------------------------------------------------------


def test_load_beir_reads_title_text_and_keeps_judged_queries(data_dir):
    data = load_beir(data_dir)
    assert len(data.doc_ids) == 12 and data.doc_ids[0] == "bread-0"
    assert data.doc_texts[0] == doc_text("bread notes 0", make_dataset()[0][0]["text"])
    assert data.doc_texts[0].startswith("bread notes 0 flour yeast")
    assert doc_text("", "only text") == "only text"
    assert data.query_ids == ["q0", "q1", "q2", "q3"]  # "unjudged" is another split's
    assert data.qrels["q0"] == {"bread-0": 2, "bread-1": 1}  # score 0 dropped


BAD_FOLDERS = [
    (lambda p: (p / "corpus.jsonl").unlink(), r"corpus.jsonl is missing"),
    (
        lambda p: (p / "qrels" / "test.tsv").rename(p / "qrels" / "dev.tsv"),
        r"qrels/test.tsv is missing.*--split",
    ),
    (lambda p: _append(p / "corpus.jsonl", "{not json\n"), r"corpus.jsonl:13 is not valid JSON"),
    (lambda p: _append(p / "queries.jsonl", '{"text": "no id"}\n'), r"queries.jsonl:6 has no _id"),
    (
        lambda p: _append(p / "corpus.jsonl", '{"_id": "bread-0", "text": "again"}\n'),
        r"corpus.jsonl:13 repeats _id 'bread-0'",
    ),
    (
        lambda p: _append(p / "qrels" / "test.tsv", "q0\tghost-doc\t1\n"),
        r"names 1 corpus id\(s\) not in corpus.jsonl \(e.g. 'ghost-doc'\)",
    ),
    (
        lambda p: _append(p / "qrels" / "test.tsv", "q9\tbread-0\t1\nq8\tbread-1\t1\n"),
        r"names 2 query id\(s\) not in queries.jsonl",
    ),
    (
        lambda p: _append(p / "qrels" / "test.tsv", "q0\tbread-2\thigh\n"),
        r"test.tsv:11 has score 'high'",
    ),
    (
        lambda p: _append(p / "qrels" / "test.tsv", "q0 bread-2 1\n"),
        r"test.tsv:11 has 1 tab-separated columns",
    ),
]


def _append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


@pytest.mark.parametrize(("damage", "message"), BAD_FOLDERS)
def test_malformed_folder_is_a_one_line_cli_error(data_dir, tiny_path, capsys, damage, message):
    damage(data_dir)
    with pytest.raises(DatasetError, match=message):
        load_beir(data_dir)
    assert main(["eval", str(data_dir), "--model", tiny_path, "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cde-rag eval: error: ") and "\n" not in err
    assert re.search(message, err)


def test_real_command_reports_a_missing_folder_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cde_rag.cli", "eval", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"cde-rag eval: error: {tmp_path / 'nowhere'} is not a folder: pass a BEIR dataset "
        "folder holding corpus.jsonl, queries.jsonl and qrels/<split>.tsv."
    ]


# -- evaluation with the tiny model -----------------------------------------------------------


@pytest.mark.slow
def test_metrics_checked_by_hand_on_the_produced_rankings(tiny_model, data_dir):
    from cde_rag.langchain import CDEEmbeddings

    data = load_beir(data_dir)
    same_context = CDEEmbeddings(model=tiny_model, corpus=data.doc_texts, seed=42)
    report = evaluate(
        tiny_model,
        data,
        seeds=[42],
        baselines={"bow": HashingBagOfWords(), "langchain-cde": same_context},
        metrics=["ndcg@10", "recall@10", "mrr@10"],
    )
    assert [(r.name, r.kind) for r in report.results] == [
        ("fitted (seed 42)", "fitted"),
        ("fallback (random strings)", "fallback"),
        ("bow", "baseline"),
        ("langchain-cde", "baseline"),
    ]
    fitted = report.result("fitted (seed 42)")
    assert fitted.context["kind"] == "fitted" and fitted.context["seed"] == 42
    assert report.result("fallback (random strings)").context["kind"] == "fallback"
    # The rankings are the exact cosine top-k of an independent computation.
    ctx = tiny_model.fit_context(data.doc_texts, seed=42)
    assert fitted.context["fingerprint"] == ctx.fingerprint
    expected = brute_force_top(tiny_model, ctx, data, 12)
    assert {q: [d for d, _ in r] for q, r in fitted.rankings.items()} == expected
    # nDCG@10, recall@10 and MRR@10 of every query from the formulas, then their mean.
    for row in report.results:
        for qid, ranked in row.rankings.items():
            ids = [d for d, _ in ranked]
            rel = data.qrels[qid]
            first = next((i for i, d in enumerate(ids[:10]) if d in rel), None)
            assert row.per_query["ndcg@10"][qid] == pytest.approx(ndcg_by_hand(ids, rel))
            assert row.per_query["recall@10"][qid] == pytest.approx(
                len(set(ids[:10]) & set(rel)) / len(rel)
            )
            assert row.per_query["mrr@10"][qid] == pytest.approx(
                0.0 if first is None else 1 / (first + 1)
            )
        assert row.metrics["ndcg@10"] == pytest.approx(
            np.mean(list(row.per_query["ndcg@10"].values()))
        )
    # The bag-of-words baseline really embeds: each query's own words find its document.
    bow = report.result("bow")
    assert all(
        ranked[0][0] == f"{qid_topic}-0" for qid_topic, ranked in zip(TOPICS, bow.rankings.values())
    )
    assert bow.metrics["mrr@10"] == 1.0
    # The LangChain adapter with the same context reproduces the native fitted row.
    lc = report.result("langchain-cde")
    assert lc.metrics == pytest.approx(fitted.metrics)
    assert {q: [d for d, _ in r] for q, r in lc.rankings.items()} == expected


def test_killed_run_resumes_and_embeds_only_the_rest(tiny_model, data_dir, tmp_path, monkeypatch):
    data = load_beir(data_dir)
    real = tiny_model.embed_documents
    seen: list[int] = []

    def counting(texts, **kwargs):
        if len(seen) == fail_after:
            raise KeyboardInterrupt  # as if the run were killed mid-corpus
        seen.append(len(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(tiny_model, "embed_documents", counting)
    options = dict(seeds=[42], fallback=False, cache_dir=tmp_path / "cache", chunk_size=5)
    fail_after = 2
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_model, data, **options)
    assert seen == [5, 5]
    assert tiny_model.embedding_cache is None  # the run wraps the model, never modifies it

    seen.clear()
    fail_after = -1
    resumed = evaluate(tiny_model, data, **options)
    assert seen == [2]  # only the last chunk of 12 documents
    row = resumed.results[0]
    assert (row.documents_embedded, row.documents_reused) == (2, 10)
    assert (row.queries_embedded, row.queries_reused) == (4, 0)
    ctx = tiny_model.fit_context(data.doc_texts, seed=42)
    expected = brute_force_top(tiny_model, ctx, data, 12)
    assert {q: [d for d, _ in r] for q, r in row.rankings.items()} == expected

    seen.clear()
    again = evaluate(tiny_model, data, **options).results[0]
    assert seen == [] and (again.documents_embedded, again.queries_embedded) == (0, 0)
    assert again.metrics == row.metrics
    assert len(list((tmp_path / "cache" / "contexts").iterdir())) == 1  # fitted once, reloaded


def test_saved_vectors_follow_the_contexts_numbers_not_its_recipe(
    tiny_path, tiny_model, data_dir, tmp_path
):
    """A saved context replaced by another fit of the same recipe (bfloat16: same minicorpus,
    other numbers) gets its vectors computed again, in the vectors folder and in the cache."""
    from cde_rag import CDEModel

    data = load_beir(data_dir)
    options = dict(seeds=[42], fallback=False, cache_dir=tmp_path / "cache")
    first = evaluate(tiny_model, data, **options).results[0]
    fast_model = CDEModel.from_pretrained(tiny_path, device="cpu", dtype="bfloat16")
    fast = fast_model.fit_context(data.doc_texts, seed=42)
    (saved,) = (tmp_path / "cache" / "contexts").iterdir()
    fast.save(saved)
    second = evaluate(tiny_model, data, **options).results[0]
    assert second.context["fingerprint"] == first.context["fingerprint"]
    assert second.context["checksum"] == fast.checksum != first.context["checksum"]
    assert (second.documents_embedded, second.queries_embedded) == (12, 4)
    docs = tiny_model.embed_documents(data.doc_texts, context=fast)
    queries = tiny_model.embed_queries(data.query_texts, context=fast)
    expected = queries @ docs.T
    for qi, qid in enumerate(data.query_ids):
        for doc_id, score in second.rankings[qid]:
            assert score == pytest.approx(expected[qi, data.doc_ids.index(doc_id)], abs=1e-5)

    # A bfloat16 run fits its own context: a float32 fit would not be what it measures.
    fast_row = evaluate(fast_model, data, **options).results[0]
    assert fast_row.context["fit_dtype"] == "bfloat16"
    assert len(list((tmp_path / "cache" / "contexts").iterdir())) == 2


@pytest.mark.slow
def test_baseline_vectors_are_reused_only_by_the_same_embedder(tiny_model, data_dir, tmp_path):
    from cde_rag.langchain import CDEEmbeddings

    data = load_beir(data_dir)
    options = dict(seeds=[], fallback=False, cache_dir=tmp_path / "cache")
    first = CDEEmbeddings(model=tiny_model, corpus=data.doc_texts, seed=42)
    other = CDEEmbeddings(model=tiny_model, corpus=data.doc_texts, seed=7)
    runs = [
        evaluate(tiny_model, data, baselines={"cde": emb}, **options).results[0]
        for emb in (first, other, CDEEmbeddings(model=tiny_model, context=first.context))
    ]
    assert [(r.documents_embedded, r.documents_reused) for r in runs] == [(12, 0), (12, 0), (0, 12)]
    assert runs[2].metrics == runs[0].metrics


@pytest.mark.slow
def test_cli_writes_json_plot_and_table_with_seeds_and_fallback(
    tiny_path, data_dir, tmp_path, capsys
):
    out = tmp_path / "report"
    code = main(
        [
            "eval", str(data_dir), "--model", tiny_path, "--device", "cpu",
            "--seeds", "42,7", "--baseline", 'bow=test_eval:HashingBagOfWords:{"dim": 256}',
            "--output", str(out), "--chunk-size", "4",
        ]
    )  # fmt: skip
    assert code == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    names = [s["name"] for s in report["settings"]]
    assert names == ["fitted (seed 42)", "fitted (seed 7)", "fallback (random strings)", "bow"]
    assert report["metrics"] == ["ndcg@10", "recall@10", "recall@100", "mrr@10"]
    assert report["dataset"]["documents"] == 12 and report["dataset"]["queries"] == 4
    seeds = report["seed_summary"]
    assert seeds["seeds"] == [42, 7]
    for metric in report["metrics"]:
        values = [s["metrics"][metric] for s in report["settings"][:2]]
        assert seeds["mean"][metric] == pytest.approx(np.mean(values))
        assert seeds["std"][metric] == pytest.approx(np.std(values, ddof=1))
    assert report["settings"][0]["per_query"]["ndcg@10"].keys() == {"q0", "q1", "q2", "q3"}
    # The table: one line per setting plus the seeds' mean ± std, with the JSON's numbers.
    lines = stdout.splitlines()
    assert lines[1].split() == ["setting", "nDCG@10", "Recall@10", "Recall@100", "MRR@10"]
    for setting in report["settings"]:
        row = next(line for line in lines if line.startswith(setting["name"]))
        assert row.split()[-4:] == [f"{setting['metrics'][m]:.4f}" for m in report["metrics"]]
    mean_row = next(line for line in lines if line.startswith("fitted, mean ± std of 2 seeds"))
    assert f"{seeds['mean']['ndcg@10']:.4f} ± {seeds['std']['ndcg@10']:.4f}" in mean_row
    assert str(out / "report.json") in stdout and str(out / "report.png") in stdout
    # A real PNG chart.
    from matplotlib.image import imread

    image = imread(out / "report.png")
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    assert image.std() > 0.05  # not blank
    # Vectors and contexts were cached under the output folder by default.
    assert (out / "cache" / "contexts").is_dir() and any((out / "cache" / "vectors").iterdir())
    assert (out / "cache" / "embeddings.sqlite").is_file()


@pytest.mark.slow
def test_sample_dataset_ships_with_the_package_and_runs_with_phase_lines(
    tiny_path, tmp_path, capsys
):
    from cde_rag.paths import asset

    data = load_beir(evaluation.sample_path())
    assert evaluation.sample_path() == asset("eval-sample")
    assert (len(data.doc_ids), len(data.query_ids), data.name) == (26, 12, "eval-sample")
    out = tmp_path / "report"
    argv = ["eval", "--sample", "--model", tiny_path, "--device", "cpu", "--output", str(out)]
    assert main([*argv, "--no-fallback"]) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == "eval-sample" and report["dataset"]["documents"] == 26
    assert [s["name"] for s in report["settings"]] == ["fitted (seed 42)"]
    phases = [line for line in captured.err.splitlines() if line.startswith("cde-rag eval: ")]
    assert phases[:3] == [
        "cde-rag eval: eval-sample (test): 26 documents, 12 queries",
        "cde-rag eval: loading ranx, the metrics library (its first run compiles: up to a few "
        "minutes)",
        f"cde-rag eval: loading the model {tiny_path}",
    ]
    assert "cde-rag eval: fitted (seed 42): fitting the context on 26 documents" in phases
    assert "cde-rag eval: fitted (seed 42): searching and scoring" in phases
    ndcg = report["settings"][0]["metrics"]["ndcg@10"]
    assert any(p.startswith("cde-rag eval: fitted (seed 42): nDCG@10 ") for p in phases)
    assert f"nDCG@10 {ndcg:.4f}" in captured.err
    # Bars, on stderr, for every phase that embeds (even a dataset this small).
    assert "fitted (seed 42): documents: 100%" in captured.err
    assert "fitted (seed 42): queries: 100%" in captured.err
    assert captured.out.startswith("eval-sample (test): 26 documents, 12 queries")

    # Run again: the context is reloaded, the vectors too.
    assert main([*argv, "--no-fallback"]) == 0
    err = capsys.readouterr().err
    assert "cde-rag eval: fitted (seed 42): reloaded from " in err
    again = json.loads((out / "report.json").read_text())["settings"][0]
    assert (again["documents_embedded"], again["documents_reused"]) == (0, 26)
