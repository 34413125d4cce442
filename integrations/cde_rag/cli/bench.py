"""Measure the engine beside the model card's way: fit speed, throughput, latency, memory.

Without --model, builds (once, cached) a checkpoint with cde-small-v2's real sizes and random
weights: speed does not depend on weight values, and nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "benchmark exact (fp32) and fast (bf16) modes against the model card's way"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        metavar="ID_OR_PATH",
        help="checkpoint to measure (default: a locally built cde-small-v2-sized checkpoint "
        "with random weights)",
    )
    parser.add_argument("--revision", default=None, help="hub revision of --model")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run that takes seconds"
    )
    parser.add_argument("--docs", type=int, help="second-stage documents (default 32)")
    parser.add_argument("--min-tokens", type=int, help="shortest document, tokens (default 32)")
    parser.add_argument("--max-tokens", type=int, help="longest document, tokens (default 512)")
    parser.add_argument("--minicorpus", type=int, help="first-stage documents timed (default 32)")
    parser.add_argument("--queries", type=int, help="single queries timed (default 12)")
    parser.add_argument(
        "--baseline-batch-size", type=int, help="the card's fixed batch size (default 8)"
    )
    parser.add_argument(
        "--batch-size", type=int, help="the engine's batch size (default: the model's)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the built checkpoint is kept (default: ~/.cache/cde-rag/bench)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report here")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from ..bench import (
        QUICK,
        BenchSettings,
        build_checkpoint,
        default_cache_dir,
        format_table,
        run_benchmark,
    )

    settings = QUICK if args.quick else BenchSettings()
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(BenchSettings)
        if getattr(args, field.name, None) is not None
    }
    for name, value in overrides.items():
        if isinstance(value, int) and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    settings = dataclasses.replace(settings, **overrides)
    if settings.min_tokens > settings.max_tokens:
        raise ValueError("--min-tokens must not exceed --max-tokens.")
    model = args.model
    if model is None:
        folder = (args.cache_dir or default_cache_dir()) / "cde-small-v2-random"
        print(f"Using a cde-small-v2-sized checkpoint with random weights in {folder}")
        model = build_checkpoint(folder)
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
