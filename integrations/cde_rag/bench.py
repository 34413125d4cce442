"""`cde-rag bench`: how fast the engine is, beside the model card's own way, in one run.

Speed does not depend on weight values, so by default the benchmark builds (once, then reuses
from a cache folder) a checkpoint with cde-small-v2's real sizes and random weights. The real
tokenizer cannot be downloaded here, so the built checkpoint uses a small tokenizer shipped in
`cde_rag/assets/bench`, and texts are built to exact token counts: throughput is a function of
token counts, not of which tokens they are.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bench_chunking import chunking_throughput, format_chunking
from .bench_fit import corpus_sizes, every_entry, fit_times, format_fit
from .bench_flops import achieved, format_flops, matmul_peak, model_flops
from .bench_ingest import format_ingest, ingest_benchmark
from .bench_query import ForwardTimer
from .paths import asset

# cde-small-v2 = ModernBERT-base backbone twice, N = 512.
REAL_SIZES: dict[str, int] = {
    "hidden_size": 768,
    "num_hidden_layers": 22,
    "intermediate_size": 1152,
    "num_attention_heads": 12,
    "local_attention": 128,
    "global_attn_every_n_layers": 3,
    "vocab_size": 50368,
    "max_position_embeddings": 8192,
    "corpus_size": 512,
}
# `--quick` without a model: the same architecture, smaller, so a smoke run takes about a
# minute; its figures check that everything runs, they do not describe cde-small-v2.
QUICK_SIZES: dict[str, int] = {
    **REAL_SIZES,
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "intermediate_size": 384,
    "num_attention_heads": 4,
    "corpus_size": 64,
}
BUILD_VERSION = "1"


def build_checkpoint(
    folder: str | os.PathLike[str],
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a cde-small-v2-shaped checkpoint with random weights to `folder` (reused if there).

    `tokenizer_dir` holds the tokenizer files and the backbone config the sizes are written
    into (default: the ones shipped in `cde_rag/assets/bench/backbone`).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import ModernBertConfig

    from .modeling import FirstStage, SecondStage, backbone_config

    folder = Path(folder)
    sizes = {**REAL_SIZES, **(sizes or {})}
    stamp = json.dumps({"version": BUILD_VERSION, "sizes": sizes, "seed": seed}, sort_keys=True)
    if (folder / "bench-build.json").is_file() and (
        folder / "bench-build.json"
    ).read_text() == stamp:
        return folder
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else asset("bench", "backbone")
    backbone = folder / "backbone"
    backbone.mkdir(parents=True, exist_ok=True)
    raw = json.loads((tokenizer_dir / "config.json").read_text())
    raw.update({k: v for k, v in sizes.items() if k != "corpus_size"})
    (backbone / "config.json").write_text(json.dumps(raw, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            (backbone / name).write_bytes((tokenizer_dir / name).read_bytes())
    contextual = json.loads(asset("bench", "config.json").read_text())
    contextual.update({"embedder": "backbone", "transductive_corpus_size": sizes["corpus_size"]})
    (folder / "config.json").write_text(json.dumps(contextual, indent=1))

    # Shapes come from the engine's own modules, built on the meta device.
    config = backbone_config(ModernBertConfig.from_pretrained(str(backbone)), None)
    hidden = sizes["hidden_size"]
    mlp = {
        f"{p}.{i}.{kind}": (hidden, hidden) if kind == "weight" else (hidden,)
        for p in ("first_stage_model.mlp", "second_stage_model.output_projection")
        for i in (0, 2)
        for kind in ("weight", "bias")
    }
    mlp["second_stage_model.prompt_projection.0.weight"] = (hidden, hidden)
    mlp["second_stage_model.prompt_projection.0.bias"] = (hidden,)
    mlp["second_stage_model.prompt_projection.2.weight"] = (8 * hidden, hidden)
    mlp["second_stage_model.prompt_projection.2.bias"] = (8 * hidden,)
    meta = {k: torch.empty(v, device="meta") for k, v in mlp.items()}
    shapes = dict(mlp)
    for prefix, module in (
        ("first_stage_model.", FirstStage(config, meta)),
        ("second_stage_model.", SecondStage(config, meta, pool_ignore_contextual_tokens=True)),
    ):
        for name, tensor in module.state_dict().items():
            shapes[prefix + name] = tuple(tensor.shape)
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in sorted(shapes.items()):
        if "norm" in name:
            weights[name] = torch.ones(shape)
        elif name.endswith("bias"):
            weights[name] = torch.zeros(shape)
        else:
            weights[name] = torch.randn(shape, generator=generator) * 0.02
    tmp = folder / "model.safetensors.tmp"
    save_file(weights, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    (folder / "bench-build.json").write_text(stamp)
    return folder


def texts_of_lengths(model, lengths: list[int], input_type: str = "document") -> list[str]:
    """Texts that tokenize to exactly (or, when a word boundary forbids it, just under) the
    given token counts under `model`'s tokenizer, prefix and special tokens included."""
    words = asset("bench", "prose.txt").read_text(encoding="utf-8").split()
    out = []
    for i, target in enumerate(lengths):
        pool = words[i % len(words) :] + words[: i % len(words)]
        while len(pool) < 4 * target:
            pool = pool + pool
        lo, hi = 0, 4 * target
        while lo < hi:  # the most words that fit in `target` tokens
            mid = (lo + hi + 1) // 2
            if model.count_tokens([" ".join(pool[:mid])], input_type)[0] <= target:
                lo = mid
            else:
                hi = mid - 1
        out.append(" ".join(pool[:lo]))
    return out


def mixed_lengths(n: int, low: int, high: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(low, high + 1, size=n).tolist()


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """Sizes of one run. With cde-small-v2's sizes the defaults take from about 15 minutes (2
    cores with bfloat16 instructions) to over an hour (without them, fast mode is emulated):
    each figure is a ratio over the same work, not an absolute claim."""

    docs: int = 32
    min_tokens: int = 32
    max_tokens: int = 512
    minicorpus: int = 32
    queries: int = 12
    query_tokens: int = 20
    # Small fixed batches let the three modes take turns often; on a CPU, where every row
    # carries 520+ tokens, the card's batch size barely changes its speed.
    baseline_batch_size: int = 8
    batch_size: int | None = None
    seed: int = 0
    # Chunking throughput (see bench_chunking): the largest input, and the time that stops
    # an input's doubling early when the chunker is slow on it.
    chunking_mb: float = 1.0
    chunking_budget_s: float = 4.0
    # Fit by corpus size (see bench_fit): tokens per chunk of the corpora fitted.
    fit_tokens: int = 64
    # The peak's matrix multiply (see bench_flops): size x size by size x size.
    peak_matmul: int = 2048


QUICK = BenchSettings(
    docs=8,
    minicorpus=8,
    queries=3,
    baseline_batch_size=4,
    max_tokens=128,
    chunking_mb=0.25,
    chunking_budget_s=2.0,
    peak_matmul=1024,
)


def rss_mb() -> dict[str, float]:
    """Current and peak resident memory of this process, in MB."""
    current = peak = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rss_mb": round(current, 1), "peak_rss_mb": round(peak, 1)}


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall-clock and CPU seconds (all threads of this process) of `fn()`, and its result.
    CPU time is the steadier figure on a machine shared with other work."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def run_benchmark(
    model_path: str | os.PathLike[str],
    settings: BenchSettings,
    *,
    device: str | None = None,
    revision: str | None = None,
    random_weights: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Measure baseline, exact (float32) and fast (bfloat16) modes on one checkpoint.

    Modes take turns on the same slices of work (one baseline batch at a time), so a machine
    whose load changes during the run slows all three alike and the ratios stay fair.
    """
    from tqdm.auto import tqdm

    from .model import CDEModel, _dtype_name
    from .reference import PaddedReference
    from .tokenization import DOCUMENT_PREFIX, QUERY_PREFIX

    s = settings
    memory: dict[str, Any] = {"start": rss_mb()}
    exact = CDEModel.from_pretrained(model_path, revision=revision, device=device)
    memory["exact_model_loaded"] = rss_mb()
    fast = CDEModel.from_pretrained(model_path, revision=revision, device=device, dtype="bfloat16")
    memory["fast_model_loaded"] = rss_mb()
    baseline = PaddedReference(exact)
    models = {"exact": exact, "fast": fast}
    mini = texts_of_lengths(exact, mixed_lengths(s.minicorpus, s.min_tokens, s.max_tokens, s.seed))
    docs = texts_of_lengths(exact, mixed_lengths(s.docs, s.min_tokens, s.max_tokens, s.seed + 1))
    queries = texts_of_lengths(exact, [s.query_tokens] * s.queries, "query")
    queries = [f"{q} {i}" for i, q in enumerate(queries)]  # distinct texts
    first_chunks = _chunks(len(mini), s.baseline_batch_size)
    second_chunks = _chunks(len(docs), s.baseline_batch_size)
    total = len(first_chunks) + len(second_chunks) + len(queries) + 8
    bar = tqdm(total=total, desc="Benchmarking", unit="step", disable=not show_progress)
    times = {mode: {"first": 0.0, "second": 0.0, "query": []} for mode in ("baseline", *models)}
    cpu_times = {mode: {"first": 0.0, "second": 0.0} for mode in times}
    outputs: dict[str, list[np.ndarray]] = {mode: [] for mode in times}

    # Warm-up: the first call of each path pays one-off costs (allocations, kernel choice).
    context = exact.context_from_embeddings(
        np.random.default_rng(s.seed)
        .standard_normal((exact.corpus_size, exact.dim))
        .astype(np.float32)
        * 0.02
    )
    warm = baseline.tokenize(queries[:1], QUERY_PREFIX)
    baseline.embed(warm, context, 0, 1)
    for model in models.values():
        model.embed_queries(queries[:1], context=context, show_progress=False)
    bar.update(1)

    # First stage: the baseline keeps its first stage resident (as the card's model does) and
    # runs in fixed batches; the engine fits as it always does: one call that loads the first
    # stage, embeds the minicorpus and lets the first stage go, so its time includes the load.
    card_first = exact._load_first_stage()
    encoded = baseline.tokenize(mini, DOCUMENT_PREFIX)
    baseline_rows = []
    for start, stop in first_chunks:
        seconds, cpu, rows = _timed(
            lambda a=start, b=stop, f=card_first: baseline.dataset_embeddings(f, encoded, a, b)
        )
        times["baseline"]["first"] += seconds
        cpu_times["baseline"]["first"] += cpu
        baseline_rows.append(rows)
        bar.update(1)
    # Weights may be memory-mapped: they count as resident once used, so measure after use.
    memory["baseline_first_stage_resident"] = rss_mb()
    del card_first
    gc.collect()
    first_stage = {"baseline": np.concatenate(baseline_rows)}
    for mode, model in models.items():
        seconds, cpu, first_stage[mode] = _timed(
            lambda m=model: m._dataset_embeddings(mini, s.batch_size, False)
        )
        times[mode]["first"] += seconds
        cpu_times[mode]["first"] += cpu
        memory[f"after_{mode}_fit"] = rss_mb()
    bar.update(1)

    # The first stage's forward alone (no load), for its FLOP rate.
    first_forward = {mode: every_entry(m, mini, s.batch_size)[1] for mode, m in models.items()}
    bar.update(1)

    # Re-fitting the same texts is served by the context cache: nothing is recomputed.
    refit_seconds, refit_cpu, again = _timed(
        lambda: exact._dataset_embeddings(mini, s.batch_size, False)
    )
    refit_ok = bool(np.array_equal(again, first_stage["exact"]))
    # The second stage attends to real dataset embeddings: the exact first stage's, repeated
    # up to N rows (a fit of N documents would dominate the run).
    context = exact.context_from_embeddings(
        np.resize(first_stage["exact"], (exact.corpus_size, first_stage["exact"].shape[1]))
    )
    bar.update(1)

    encoded = baseline.tokenize(docs, DOCUMENT_PREFIX)
    padded_to = int(encoded["input_ids"].shape[1])
    for start, stop in second_chunks:
        seconds, cpu, rows = _timed(lambda a=start, b=stop: baseline.embed(encoded, context, a, b))
        times["baseline"]["second"] += seconds
        cpu_times["baseline"]["second"] += cpu
        outputs["baseline"].append(rows)
        for mode, model in models.items():
            seconds, cpu, rows = _timed(
                lambda m=model, a=start, b=stop: m.embed_documents(
                    docs[a:b], context=context, batch_size=s.batch_size, show_progress=False
                )
            )
            times[mode]["second"] += seconds
            cpu_times[mode]["second"] += cpu
            outputs[mode].append(rows)
        bar.update(1)
    second = {mode: np.concatenate(rows) for mode, rows in outputs.items()}

    forward_timers = {mode: ForwardTimer(model, context) for mode, model in models.items()}
    forward_times: dict[str, list[float]] = {mode: [] for mode in models}
    for query in queries:
        seconds_b, _, _ = _timed(
            lambda q=query: baseline.embed(baseline.tokenize([q], QUERY_PREFIX), context, 0, 1)
        )
        times["baseline"]["query"].append(seconds_b)
        for mode, model in models.items():
            seconds_m, _, _ = _timed(
                lambda m=model, q=query: m.embed_queries([q], context=context, show_progress=False)
            )
            times[mode]["query"].append(seconds_m)
            forward_times[mode].append(forward_timers[mode](query))
        bar.update(1)

    # Caches: re-embedding the same documents under the same context computes nothing.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cache = exact.use_embedding_cache(Path(tmp) / "embeddings.sqlite")
        try:
            sample = docs[: max(1, min(4, len(docs)))]
            exact.embed_documents(sample, context=context, show_progress=False)
            again, _, _ = _timed(
                lambda: exact.embed_documents(sample, context=context, show_progress=False)
            )
            cache_report = {"reembed_seconds": round(again, 4), **cache.stats}
        finally:
            exact.use_embedding_cache(None)
            cache.close()
    bar.update(1)
    chunking = chunking_throughput(s.chunking_mb, s.chunking_budget_s)
    bar.update(1)
    fit = fit_times(exact, corpus_sizes(exact.corpus_size), s.fit_tokens, s.batch_size)
    bar.update(1)
    peak = {dtype: matmul_peak(dtype, s.peak_matmul) for dtype in ("float32", "bfloat16")}
    bar.update(1)
    bar.close()
    memory["end"] = rss_mb()

    def per_s(count: int, seconds: float) -> float:
        return round(count / seconds, 4) if seconds > 0 else float("inf")

    def block(count: int, key: str) -> dict[str, Any]:
        figures = {mode: per_s(count, t[key]) for mode, t in times.items()}
        cpu = {mode: t[key] for mode, t in cpu_times.items()}
        return {
            "docs_per_s": figures,
            "seconds": {mode: round(t[key], 3) for mode, t in times.items()},
            "cpu_seconds": {mode: round(value, 3) for mode, value in cpu.items()},
            "ratio_vs_baseline": {
                mode: round(figures[mode] / figures["baseline"], 3) for mode in models
            },
            "cpu_ratio_vs_baseline": {
                mode: round(cpu["baseline"] / cpu[mode], 3) if cpu[mode] > 0 else None
                for mode in models
            },
        }

    def quantiles(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return {"p50_s": round(statistics.median(ordered), 4), "p95_s": round(p95, 4)}

    latency = {mode: quantiles(t["query"]) for mode, t in times.items()}
    forward_p50 = {mode: statistics.median(seconds) for mode, seconds in forward_times.items()}
    per_query = {
        key: value // len(queries)
        for key, value in model_flops(exact, queries, "second", "query").items()
    }
    work = {
        "first": (model_flops(exact, mini, "first"), first_forward),
        "second": (model_flops(exact, docs, "second"), {m: times[m]["second"] for m in models}),
        "query": (per_query, forward_p50),
    }
    flops = {
        "peak": peak,
        **{
            mode: {
                stage: achieved(count, seconds[mode], peak[_dtype_name(model.dtype)]["gflops"])
                for stage, (count, seconds) in work.items()
            }
            for mode, model in models.items()
        },
    }
    return {
        "machine": machine(),
        "model": {
            "path": str(model_path),
            "name": exact.name,
            "random_weights": random_weights,
            "corpus_size": exact.corpus_size,
            "dim": exact.dim,
            "layers": exact.second_stage.backbone.config.num_hidden_layers,
            "device": str(exact.device),
        },
        "settings": {**asdict(s), "baseline_padded_to": padded_to},
        "first_stage": block(len(mini), "first"),
        "second_stage": block(len(docs), "second"),
        "query_latency": {
            **latency,
            "ratio_vs_baseline": {
                mode: round(latency["baseline"]["p50_s"] / latency[mode]["p50_s"], 3)
                for mode in models
            },
            "forward_p50_s": {mode: round(value, 4) for mode, value in forward_p50.items()},
            "ratio_vs_forward": {
                mode: round(latency[mode]["p50_s"] / forward_p50[mode], 3) for mode in models
            },
        },
        "fit": fit,
        "flops": flops,
        "accuracy": {
            "exact_vs_baseline_max_abs": float(np.abs(second["exact"] - second["baseline"]).max()),
            "exact_vs_baseline_first_stage_max_abs": float(
                np.abs(first_stage["exact"] - first_stage["baseline"]).max()
            ),
            "fast_vs_exact_min_cosine": _min_cosine(second["fast"], second["exact"]),
            "fast_vs_exact_first_stage_min_cosine": _min_cosine(
                first_stage["fast"], first_stage["exact"]
            ),
        },
        "memory": memory,
        "caches": {
            "refit_seconds": round(refit_seconds, 4),
            "refit_cpu_seconds": round(refit_cpu, 4),
            "refit_identical": refit_ok,
            **exact.cache_stats,
            "embedding_cache": cache_report,
        },
        "chunking": chunking,
        # Ingestion beside the engine on 2 files per second-stage document; memory on 8 and 80.
        "ingest": ingest_benchmark(model_path, 2 * s.docs, 8 * s.docs, device=device),
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: figures beside the baseline, and ratios."""
    first, second, latency = report["first_stage"], report["second_stage"], report["query_latency"]
    rows = [
        ("First stage (docs/s)", first),
        ("Second stage, mixed lengths (docs/s)", second),
    ]
    lines = [
        "| Measure | Model card's way | Exact (fp32) | Fast (bf16) | Exact vs card "
        "(wall, CPU time) | Fast vs card (wall, CPU time) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, block in rows:
        figures, ratios, cpu = (
            block["docs_per_s"],
            block["ratio_vs_baseline"],
            block["cpu_ratio_vs_baseline"],
        )
        lines.append(
            f"| {name} | {figures['baseline']:.3g} | {figures['exact']:.3g} | "
            f"{figures['fast']:.3g} | {ratios['exact']:.2f}x (CPU {cpu['exact']:.2f}x) | "
            f"{ratios['fast']:.2f}x (CPU {cpu['fast']:.2f}x) |"
        )
    for key, label in (("p50_s", "p50"), ("p95_s", "p95")):
        b, e, f = (latency[m][key] for m in ("baseline", "exact", "fast"))
        lines.append(
            f"| Single query latency {label} (s) | {b:.3f} | {e:.3f} | {f:.3f} | "
            f"{b / e:.2f}x | {b / f:.2f}x |"
        )
    acc, mem = report["accuracy"], report["memory"]
    lines += [
        "",
        f"Exact vs card: max abs difference {acc['exact_vs_baseline_max_abs']:.2e} "
        f"(first stage {acc['exact_vs_baseline_first_stage_max_abs']:.2e}); fast vs exact: "
        f"min cosine {acc['fast_vs_exact_min_cosine']:.5f} "
        f"(first stage {acc['fast_vs_exact_first_stage_min_cosine']:.5f}).",
        f"Memory (RSS, MB): both engine models loaded {mem['fast_model_loaded']['rss_mb']:.0f}, "
        "with the card's first stage resident "
        f"{mem['baseline_first_stage_resident']['rss_mb']:.0f}, "
        f"after the engine's fit (first stage released) {mem['after_exact_fit']['rss_mb']:.0f}, "
        f"peak {mem['end']['peak_rss_mb']:.0f}.",
    ]
    m, st = report["machine"], report["settings"]
    lines.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads, "
        f"{m['cpu_capability']}). {st['docs']} documents of {st['min_tokens']}-{st['max_tokens']} "
        f"tokens (card pads them to {st['baseline_padded_to']}), {st['minicorpus']} first-stage "
        f"documents, {st['queries']} queries of {st['query_tokens']} tokens."
    )
    forward, overhead = latency["forward_p50_s"], latency["ratio_vs_forward"]
    lines.append(
        "Single query p50 vs the second stage's forward alone: "
        + "; ".join(
            f"{mode} {latency[mode]['p50_s']:.3f} s vs {forward[mode]:.3f} s "
            f"({overhead[mode]:.2f}x)"
            for mode in ("exact", "fast")
        )
        + "."
    )
    lines += ["", format_fit(report["fit"]), "", format_flops(report["flops"])]
    lines += ["", format_chunking(report["chunking"])]
    lines += ["", format_ingest(report["ingest"])]
    return "\n".join(lines)
