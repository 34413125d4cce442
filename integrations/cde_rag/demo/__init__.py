"""The Gradio demo: chat over your documents, with cited sources and the corpus context in view.

Service and view live apart: `index.DemoIndex` (no Gradio) is the part every browser session
shares and holds all the logic (indexing, search, answers, compare, the context), so it is
tested without a browser; `render` turns its results into the page's Markdown and HTML; `ui`
lays the Gradio `Blocks` over it; `launcher` starts it with safe defaults (loopback only, a
`Host` check, no share link, no analytics, bounded uploads, no extra served folders).
`cde_rag.demo_app` re-exports the public names.
"""

from __future__ import annotations

import os

# Set before Gradio is imported anywhere in this process: Gradio reads it at import time.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
