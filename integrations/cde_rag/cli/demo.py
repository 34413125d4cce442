"""`cde-rag demo`: the Gradio app to chat over your documents (see `cde_rag.demo_app`)."""

from __future__ import annotations

import argparse

from ._common import add_chunking_arguments, add_model_arguments, load_model, port, positive_int

HELP = "start the Gradio demo: upload files, chat with cited sources, inspect the context"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="folder for the demo's Chroma index (default: $CDE_RAG_DEMO_DATA, else "
        "~/.local/share/cde-rag/demo); restarting with the same folder shows the same documents",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; anything else exposes "
        "your documents to the network)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to NAME (a reverse proxy's host name; repeatable). "
        "Bound to loopback, the demo answers only localhost, 127.0.0.1 and [::1] otherwise, so "
        "a web page cannot reach it through DNS rebinding",
    )
    parser.add_argument(
        "--samples",
        default=None,
        metavar="DIR",
        help="folder of sample documents offered by a 'Try' button (default: the three "
        "samples bundled with cde-rag)",
    )
    parser.add_argument("--port", type=port, default=7860, help="TCP port (default 7860)")
    parser.add_argument(
        "--max-upload-mb",
        type=positive_int,
        default=20,
        help="largest file accepted for upload, in MB (default 20)",
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=4, help="chunks retrieved per question (default 4)"
    )
    add_chunking_arguments(parser)
    llm = parser.add_argument_group(
        "LLM answers (optional; default: extractive answers, no LLM needed)"
    )
    llm.add_argument(
        "--llm-base-url",
        default=None,
        metavar="URL",
        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 "
        "(default: $CDE_RAG_LLM_BASE_URL)",
    )
    llm.add_argument(
        "--llm-model", default=None, help="chat model name (default: $CDE_RAG_LLM_MODEL)"
    )
    llm.add_argument(
        "--llm-api-key",
        default=None,
        help="API key (default: $CDE_RAG_LLM_API_KEY; prefer the variable, flags show in ps)",
    )


def run(args: argparse.Namespace) -> int:
    from ..answer import LLMConfig
    from ..demo_app import DemoIndex, build_demo, default_data_dir, launch, sample_files
    from ..errors import CheckpointError

    llm = LLMConfig.from_settings(args.llm_base_url, args.llm_model, args.llm_api_key)
    try:
        model = load_model(args)  # fails fast, with the offline remedy, before Gradio starts
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc} To use a checkpoint folder: cde-rag demo --model /path/to/checkpoint"
        ) from exc
    index = DemoIndex(
        model,
        args.data or default_data_dir(),
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        seed=args.seed,
        top_k=args.top_k,
        max_file_bytes=args.max_upload_mb * 1024 * 1024,
        llm=llm,
    )
    answers = f"LLM {llm.model} at {llm.base_url}" if llm else "extractive (no LLM)"
    print(
        f"cde-rag demo: model {model.name}, data {index.data_dir}, answers: {answers}",
        flush=True,
    )
    samples = sample_files(args.samples)
    if args.samples and not samples:
        raise ValueError(f"--samples {args.samples}: no .txt/.md/.pdf/.html files there.")
    launch(
        build_demo(index, samples=samples),
        index.data_dir,
        host=args.host,
        port=args.port,
        max_file_mb=args.max_upload_mb,
        allowed_hosts=args.allowed_host,
    )
    return 0
