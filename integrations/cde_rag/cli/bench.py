"""Measure the engine beside the model card's way, and how fast documents are chunked.

Fit speed, throughput, latency and memory of exact and fast mode; chunking MB/s on prose and
on repetitive text. Without --model, builds (once, cached) a checkpoint with cde-small-v2's
real sizes and random weights: speed does not depend on weight values, and nothing is
downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError, add_model_arguments, positive_float, positive_int

HELP = "benchmark exact (fp32) and fast (bf16) modes against the model card's way, and chunking"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Both dtypes are measured (exact and fast mode): no --dtype.
    add_model_arguments(
        parser,
        default=None,
        model_help="checkpoint to measure (default: a locally built cde-small-v2-sized "
        "checkpoint with random weights)",
        dtype=False,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of about a minute: few, short texts, and without --model a smaller "
        "built checkpoint (6 layers, hidden 256, N = 64)",
    )
    parser.add_argument("--docs", type=positive_int, help="second-stage documents (default 32)")
    parser.add_argument(
        "--min-tokens", type=positive_int, help="shortest document, tokens (default 32)"
    )
    parser.add_argument(
        "--max-tokens", type=positive_int, help="longest document, tokens (default 512)"
    )
    parser.add_argument(
        "--minicorpus", type=positive_int, help="first-stage documents timed (default 32)"
    )
    parser.add_argument("--queries", type=positive_int, help="single queries timed (default 12)")
    parser.add_argument(
        "--baseline-batch-size", type=positive_int, help="the card's fixed batch size (default 8)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, help="the engine's batch size (default: the model's)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the built checkpoint is kept (default: $XDG_CACHE_HOME/cde-rag/bench, "
        "~/.cache/cde-rag/bench)",
    )
    parser.add_argument(
        "--chunking-mb",
        type=positive_float,
        help="largest text the chunking measure splits, in MB (default 1; 0.25 with --quick)",
    )
    parser.add_argument(
        "--fit-tokens",
        type=positive_int,
        help="tokens per chunk of the corpora whose fit is timed by size (default 64)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report here")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from ..bench import (
        QUICK,
        QUICK_SIZES,
        BenchSettings,
        build_checkpoint,
        format_table,
        run_benchmark,
    )
    from ..paths import cache_dir

    settings = QUICK if args.quick else BenchSettings()
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(BenchSettings)
        if getattr(args, field.name, None) is not None
    }
    settings = dataclasses.replace(settings, **overrides)
    if settings.min_tokens > settings.max_tokens:
        raise UsageError(
            f"--min-tokens ({settings.min_tokens}) must not exceed --max-tokens "
            f"({settings.max_tokens})."
        )
    model = args.model
    if model is None:
        root = args.cache_dir or cache_dir("bench")
        if args.quick:
            folder = build_checkpoint(root / "quick-random", sizes=QUICK_SIZES)
            print(f"Using a small checkpoint (6 layers) with random weights in {folder}")
        else:
            folder = build_checkpoint(root / "cde-small-v2-random")
            print(f"Using a cde-small-v2-sized checkpoint with random weights in {folder}")
        model = folder
    report = run_benchmark(
        model,
        settings,
        device=args.device,
        revision=args.revision,
        random_weights=args.model is None,
    )
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"Report written to {args.json}")
    return 0
