"""Measure retrieval quality on a BEIR folder: fitted corpus context vs. fallback vs. baselines.

`--sample` runs on a small dataset shipped with cde-rag (26 documents, 12 queries), to see
the command work and the report's format before pointing it at your own data.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from ..context import DEFAULT_SEED
from ._common import UsageError, add_model_arguments, load_model, phase_lines, positive_int
from ._text import terminal_safe

HELP = "measure retrieval quality (nDCG, recall, MRR) on a BEIR-format dataset"
SAMPLE_DATASET = "26 documents, 12 queries"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        nargs="?",
        help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (or --sample)",
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help=f"use the small BEIR dataset shipped with cde-rag ({SAMPLE_DATASET})",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=[DEFAULT_SEED],
        help="comma-separated minicorpus seeds, one fitted context each (default: 42); "
        "with several, the table shows mean ± std",
    )
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="skip the random-strings fallback context",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="[NAME=]MODULE:CLASS[:JSON]",
        help="a LangChain Embeddings class to compare with, built as CLASS(**JSON), e.g. "
        """'openai=langchain_openai:OpenAIEmbeddings:{"model": "text-embedding-3-small"}'"""
        " (repeatable)",
    )
    parser.add_argument("--split", default="test", help="qrels file to use (default: test)")
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated ranx metrics (default: ndcg@10,recall@10,recall@100,mrr@10)",
    )
    parser.add_argument(
        "--k", type=positive_int, default=None, help="documents retrieved per query (default: 100)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for report.json and report.png (default: ./cde-eval/<dataset name>)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where contexts and vectors are kept so an interrupted run resumes "
        "(default: <output>/cache)",
    )
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=None,
        help="texts embedded and saved per chunk, the unit of resumption (default: 1000)",
    )


def run(args: argparse.Namespace) -> int:
    if (args.data is None) == (not args.sample):
        raise UsageError("give a BEIR folder DATA or --sample (one of them).")
    with phase_lines("cde-rag eval"):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import (
        DEFAULT_K,
        DEFAULT_METRICS,
        check_metrics,
        evaluate,
        load_beir,
        log,
        sample_path,
    )

    options: dict[str, Any] = {"seeds": args.seeds}
    if args.k is not None:
        options["k"] = args.k
    if args.chunk_size is not None:
        options["chunk_size"] = args.chunk_size
    baselines = dict(parse_baseline(spec) for spec in args.baseline)
    # A bad folder fails here, in a second, before the metric library and the model load.
    dataset = load_beir(sample_path() if args.sample else args.data, split=args.split)
    log.info(
        "%s (%s): %d documents, %d queries",
        dataset.name,
        dataset.split,
        len(dataset.doc_ids),
        len(dataset.query_ids),
    )
    log.info("loading ranx, the metrics library (its first run compiles: up to a few minutes)")
    metrics = args.metrics.split(",") if args.metrics is not None else DEFAULT_METRICS
    options["metrics"] = check_metrics(metrics, options.get("k", DEFAULT_K))
    output = args.output if args.output is not None else Path("cde-eval") / dataset.name
    log.info("loading the model %s", args.model)
    model = load_model(args)
    report = evaluate(
        model,
        dataset,
        fallback=not args.no_fallback,
        baselines=baselines,
        cache_dir=args.cache_dir if args.cache_dir is not None else output / "cache",
        show_progress=True,
        **options,
    )
    log.info("writing the report to %s", output)
    paths = report.write(output)
    # Dataset, baseline and model names come from outside: each line is printed escaped.
    lines = [*report.table().splitlines(), "", f"Report: {paths['json']}"]
    print("\n".join(terminal_safe(line) for line in [*lines, f"Plot:   {paths['plot']}"]))
    return 0


def parse_seeds(text: str) -> list[int]:
    """An argparse type: comma-separated non-negative integers."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"takes distinct comma-separated non-negative integers, e.g. 42,1,2; got {text!r}"
        )
    return seeds


def parse_baseline(spec: str) -> tuple[str, Any]:
    """`[NAME=]module:Class[:json-kwargs]` -> (NAME or Class, Class(**kwargs))."""
    name, sep, target = spec.partition("=")
    if not sep or ":" in name:  # no NAME= prefix (an "=" inside the JSON does not count)
        name, target = "", spec
    module_name, _, rest = target.partition(":")
    class_name, _, raw_kwargs = rest.partition(":")
    if not module_name or not class_name:
        raise ValueError(
            f"--baseline {spec!r}: expected [NAME=]MODULE:CLASS[:JSON], e.g. "
            'langchain_openai:OpenAIEmbeddings:{"model": "text-embedding-3-small"}.'
        )
    try:
        kwargs = json.loads(raw_kwargs) if raw_kwargs else {}
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"--baseline {spec!r}: the keyword arguments are not JSON ({exc})."
        ) from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--baseline {spec!r}: the keyword arguments must be a JSON object.")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ValueError(f"--baseline {spec!r}: cannot import {module_name} ({exc}).") from None
    except AttributeError:
        raise ValueError(f"--baseline {spec!r}: {module_name} has no {class_name}.") from None
    try:
        embeddings = cls(**kwargs)
    except Exception as exc:
        raise ValueError(f"--baseline {spec!r}: {class_name}(**{kwargs}) failed: {exc}") from exc
    return name or class_name, embeddings
