"""`cde-rag bench` runs end to end on the tiny checkpoint and reports every figure; its
checkpoint builder, text builder and chunking measure do what they promise. No timing is
asserted: the chunking measure's budget is tested with chunkers of known cost."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from cde_rag import CDEModel
from cde_rag.bench import build_checkpoint, texts_of_lengths
from cde_rag.bench_chunking import MB, START_BYTES, chunking_throughput, measure

MODES = ("baseline", "exact", "fast")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cde_rag.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def quick_report(tiny_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report.json"
    done = _cli("--quick", "--model", tiny_path, "--json", str(out))
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_bench_writes_every_figure_with_ratios(quick_report):
    report, _ = quick_report
    for block in ("first_stage", "second_stage"):
        figures = report[block]
        assert all(_positive(figures["docs_per_s"][mode]) for mode in MODES)
        assert all(_positive(figures["cpu_seconds"][mode]) for mode in MODES)
        for mode in ("exact", "fast"):
            ratio = figures["ratio_vs_baseline"][mode]
            expected = figures["docs_per_s"][mode] / figures["docs_per_s"]["baseline"]
            assert ratio == pytest.approx(expected, rel=1e-2)
            assert _positive(figures["cpu_ratio_vs_baseline"][mode])
    latency = report["query_latency"]
    for mode in MODES:
        assert 0 < latency[mode]["p50_s"] <= latency[mode]["p95_s"]
    assert set(latency["ratio_vs_baseline"]) == {"exact", "fast"}
    assert report["settings"]["docs"] == 8 and report["settings"]["queries"] == 3
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert report["model"]["corpus_size"] == 32 and report["model"]["random_weights"] is False


@pytest.mark.slow
def test_quick_bench_outputs_agree_across_modes(quick_report):
    accuracy = quick_report[0]["accuracy"]
    # The engine's exact mode computes what the model card's code computes.
    assert accuracy["exact_vs_baseline_max_abs"] < 1e-4
    assert accuracy["exact_vs_baseline_first_stage_max_abs"] < 1e-4
    assert accuracy["fast_vs_exact_min_cosine"] >= 0.999
    assert accuracy["fast_vs_exact_first_stage_min_cosine"] >= 0.999


@pytest.mark.slow
def test_quick_bench_reports_caches_and_memory(quick_report):
    report, stdout = quick_report
    caches = report["caches"]
    assert caches["refit_identical"] is True and caches["context_hits"] >= 1
    assert caches["embedding_cache"]["hits"] == caches["embedding_cache"]["misses"] > 0
    memory = report["memory"]
    assert memory["end"]["peak_rss_mb"] >= memory["exact_model_loaded"]["rss_mb"] > 0
    assert "| Second stage, mixed lengths (docs/s) |" in stdout and "Machine:" in stdout


@pytest.mark.slow
def test_quick_bench_reports_fit_time_by_corpus_size(quick_report):
    report, stdout = quick_report
    fit = report["fit"]
    corpora = fit["corpora"]
    # The tiny model's N is 32: 40, 200 and 5000 chunks for N = 512, scaled.
    assert [row["chunks"] for row in corpora] == [2, 12, 312]
    assert corpora[0]["distinct"] == 2 and corpora[-1]["distinct"] == 32
    assert fit["reference_chunks"] == 312 and corpora[-1]["speedup_vs_most_distinct"] == 1.0
    smallest = corpora[0]
    assert _positive(smallest["every_entry_seconds"]) and _positive(smallest["seconds"])
    assert smallest["speedup_vs_every_entry"] == pytest.approx(
        smallest["every_entry_seconds"] / smallest["seconds"], rel=0.05
    )
    assert smallest["max_abs_vs_every_entry"] < 1e-4  # the same context as before
    assert "| Fit (float32, chunks of ~64 tokens, N = 32) | 2 chunks |" in stdout


@pytest.mark.slow
def test_quick_bench_reports_query_overhead_and_flop_rates(quick_report):
    report, stdout = quick_report
    latency = report["query_latency"]
    for mode in ("exact", "fast"):
        forward = latency["forward_p50_s"][mode]
        assert _positive(forward)
        assert latency["ratio_vs_forward"][mode] == pytest.approx(
            latency[mode]["p50_s"] / forward, rel=0.05
        )
    flops = report["flops"]
    assert all(_positive(flops["peak"][dtype]["gflops"]) for dtype in ("float32", "bfloat16"))
    for mode, dtype in (("exact", "float32"), ("fast", "bfloat16")):
        for stage in ("first", "second", "query"):
            rate = flops[mode][stage]
            assert _positive(rate["gflop"]) and _positive(rate["gflops"])
            assert rate["percent_of_peak"] == pytest.approx(
                100 * rate["gflops"] / flops["peak"][dtype]["gflops"], rel=0.05, abs=0.2
            )
    assert "| Peak: 1024^3 matmul (GFLOP/s) |" in stdout
    assert "Single query p50 vs the second stage's forward alone" in stdout


@pytest.mark.slow
def test_quick_bench_reports_chunking_throughput(quick_report):
    report, stdout = quick_report
    chunking = report["chunking"]
    assert (chunking["chunk_size"], chunking["chunk_overlap"]) == (1000, 150)
    inputs = chunking["inputs"]
    assert set(inputs) == {"prose", "one_char", "zero_comma"}
    for result in inputs.values():
        assert _positive(result["mb_per_s"]) and result["chunks"] >= 1
        assert result["mb_per_s"] == pytest.approx(result["bytes"] / MB / result["seconds"], 0.01)
        assert result["runs"][0]["bytes"] == START_BYTES and result["runs"][-1]["bytes"] <= MB // 4
    assert inputs["prose"]["reached_max"] and inputs["prose"]["bytes"] == MB // 4  # --quick
    for name in ("one_char", "zero_comma"):
        expected = inputs["prose"]["mb_per_s"] / inputs[name]["mb_per_s"]
        assert chunking["prose_vs"][name] == pytest.approx(expected, rel=0.01)
    assert "| Chunking (1000/150 characters) | Prose | One repeated character |" in stdout
    assert "| MB/s |" in stdout and "| Prose vs this (x) | 1 |" in stdout


def _sleeping_chunker(power: int, unit_s: float):
    """A chunker whose cost is known: unit_s x (KB of text) ** power seconds."""
    import time

    def chunk(documents):
        time.sleep(unit_s * (len(documents[0].text) / 1024) ** power)
        return [documents[0]]

    return chunk


def test_chunking_measure_stops_before_a_superlinear_chunker_passes_the_budget():
    # Cubic: 1 KB 1 ms, 2 KB 8 ms, 4 KB 64 ms, 8 KB 0.5 s, 16 KB 4 s (never run).
    result = measure("a", MB, 1.0, _sleeping_chunker(3, 0.001))
    assert [run["bytes"] for run in result["runs"]] == [1024, 2048, 4096, 8192]
    assert result["bytes"] == 8192 and not result["reached_max"]
    assert sum(run["seconds"] for run in result["runs"]) < 1.0


def test_chunking_measure_reaches_the_largest_size_when_it_is_cheap():
    result = measure("0,", 64 * 1024, 5.0, _sleeping_chunker(1, 0.0001))
    assert [run["bytes"] for run in result["runs"]] == [1024 * 2**i for i in range(7)]
    assert result["reached_max"] and result["bytes"] == 64 * 1024


def test_chunking_throughput_chunks_the_real_inputs():
    report = chunking_throughput(max_mb=0.002, budget_s=30.0)
    for name, result in report["inputs"].items():
        assert result["bytes"] == int(0.002 * MB) and result["reached_max"], name
        assert result["chunks"] >= 2  # 2 KB of text in chunks of at most 1000 characters


def test_bad_sizes_are_usage_errors(tiny_path):
    done = _cli("--quick", "--model", tiny_path, "--docs", "0")
    assert done.returncode == 2
    assert "--docs: must be a positive integer, got 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_built_checkpoint_loads_and_is_reused(tmp_path, golden):
    sizes = {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "intermediate_size": 48,
        "num_attention_heads": 2,
        "local_attention": 8,
        "vocab_size": 700,
        "max_position_embeddings": 1024,
        "corpus_size": 16,
    }
    folder = build_checkpoint(tmp_path / "built", sizes=sizes)
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_checkpoint(tmp_path / "built", sizes=sizes) == folder
    assert weights.stat().st_mtime_ns == stamp  # reused, not rebuilt
    model = CDEModel.from_pretrained(folder, device="cpu")
    assert model.corpus_size == 16 and model.dim == 32
    assert model.second_stage.backbone.config.num_hidden_layers == 4
    ctx = model.fit_context(golden["documents"] + golden["minicorpus"])
    out = model.embed_documents(golden["documents"][:3], context=ctx)
    assert out.shape == (3, 32) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    build_checkpoint(tmp_path / "built", sizes={**sizes, "corpus_size": 8})
    assert CDEModel.from_pretrained(folder, device="cpu").corpus_size == 8  # new sizes: rebuilt


def test_texts_are_built_to_token_counts(tiny_model):
    lengths = [16, 40, 100, 300, 512]
    texts = texts_of_lengths(tiny_model, lengths)
    counts = tiny_model.count_tokens(texts)
    assert counts[-1] == 512
    for want, got in zip(lengths[:-1], counts[:-1], strict=True):
        assert want - 4 <= got <= want  # a word boundary may leave a few tokens short
    assert len(set(texts)) == len(texts)


@pytest.mark.slow
def test_quick_bench_reports_ingestion_beside_the_engine_and_peak_memory(quick_report):
    report, stdout = quick_report
    speed, memory = report["ingest"]["speed"], report["ingest"]["memory"]
    assert speed["files"] == 16 and speed["chunks"] >= speed["files"]  # 2 per document, --quick
    for key in ("embed_seconds", "index_seconds", "embed_cpu_seconds", "index_cpu_seconds"):
        assert _positive(speed[key])
    assert speed["ratio"] == pytest.approx(speed["index_seconds"] / speed["embed_seconds"], 0.01)
    one, ten = memory["1x"], memory["10x"]
    assert (one["files"], ten["files"]) == (64, 640) and ten["chunks"] >= 9 * one["chunks"]
    assert ten["peak_rss_mb"] >= ten["rss_before_mb"] > 0 and one["peak_rss_mb"] > 0
    assert memory["growth"] == pytest.approx(ten["peak_rss_mb"] / one["peak_rss_mb"] - 1, 0.01)
    assert "| `index_paths` on the folder (read, chunk, ids, Chroma, embed) |" in stdout
    assert "| Peak RSS, fresh process (MB) | 1x: 64 files" in stdout
