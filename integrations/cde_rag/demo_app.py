"""The Gradio demo's public names, kept here so `cde_rag.demo_app` imports keep working.

The demo lives in the `cde_rag.demo` package: `DemoIndex` (the shared index, no Gradio) in
`cde_rag.demo.index`, the page's wording in `cde_rag.demo.render`, the Gradio layout in
`cde_rag.demo.ui` and the safe launch in `cde_rag.demo.launcher`.
"""

from __future__ import annotations

from .demo.index import (
    COLLECTION,
    COMPARE_ALL_UP_TO,
    COMPARE_CANDIDATES,
    DEFAULT_MAX_FILE_MB,
    DEFAULT_TOP_K,
    MAX_FILES_PER_RUN,
    Answer,
    Comparison,
    DemoIndex,
    IndexedFile,
    ProgressFn,
    bundled_samples_dir,
    default_data_dir,
    sample_files,
)
from .demo.launcher import launch, launch_options, warn_if_exposed
from .demo.render import (
    chat_text,
    context_markdown,
    failure,
    file_rows,
    md_escape,
    source_rows,
    staleness_markdown,
    status_markdown,
)
from .demo.ui import (
    COMPARE_HEADERS,
    COMPARE_HELP,
    CSS,
    FILE_HEADERS,
    INTRO,
    PHASES,
    SOURCE_HEADERS,
    build_demo,
)
from .hosts import LOOPBACK_NAMES as LOOPBACK

__all__ = [
    "COLLECTION",
    "COMPARE_ALL_UP_TO",
    "COMPARE_CANDIDATES",
    "COMPARE_HEADERS",
    "COMPARE_HELP",
    "CSS",
    "DEFAULT_MAX_FILE_MB",
    "DEFAULT_TOP_K",
    "FILE_HEADERS",
    "INTRO",
    "LOOPBACK",
    "MAX_FILES_PER_RUN",
    "PHASES",
    "SOURCE_HEADERS",
    "Answer",
    "Comparison",
    "DemoIndex",
    "IndexedFile",
    "ProgressFn",
    "build_demo",
    "bundled_samples_dir",
    "chat_text",
    "context_markdown",
    "default_data_dir",
    "failure",
    "file_rows",
    "launch",
    "launch_options",
    "md_escape",
    "sample_files",
    "source_rows",
    "staleness_markdown",
    "status_markdown",
    "warn_if_exposed",
]
