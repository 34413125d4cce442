"""Hugging Face Spaces-style entry of the cde-rag demo: `python demo/app.py`.

The app itself lives in the package (`cde_rag.demo_app`), so `cde-rag demo` works from any
folder; this file only wires it up from environment variables, the way a Space is configured:
CDE_RAG_MODEL (hub id or checkpoint folder), CDE_RAG_DEMO_DATA (index folder) and the optional
CDE_RAG_LLM_BASE_URL / CDE_RAG_LLM_MODEL / CDE_RAG_LLM_API_KEY.
"""

from __future__ import annotations

import os

from cde_rag import shared_model
from cde_rag.answer import LLMConfig
from cde_rag.demo_app import DemoIndex, build_demo, default_data_dir, launch, sample_files

index = DemoIndex(
    shared_model(os.environ.get("CDE_RAG_MODEL", "jxm/cde-small-v2")),
    default_data_dir(),
    llm=LLMConfig.from_settings(),
)
demo = build_demo(index, samples=sample_files())

if __name__ == "__main__":
    launch(
        demo,
        index.data_dir,
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
