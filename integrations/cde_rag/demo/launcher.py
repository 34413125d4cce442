"""Start the demo's Gradio server with safe defaults: private, bounded, nothing extra served."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hosts import HostCheckMiddleware, is_loopback
from ..hosts import allowed_hosts as hosts_for
from .index import DEFAULT_MAX_FILE_MB
from .ui import CSS

if TYPE_CHECKING:
    import gradio as gr


def warn_if_exposed(host: str) -> str | None:
    """A warning for a non-loopback bind: the demo has no login, and anyone who can reach the
    port can read the indexed documents and add their own."""
    if is_loopback(host):
        return None
    return (
        f"WARNING: binding the demo to {host!r} makes it reachable from other machines. It has "
        "no login: anyone who can reach this port can read your indexed documents and upload "
        "files. Use --host 127.0.0.1 unless you mean this."
    )


def launch_options(
    data_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_file_mb: int = DEFAULT_MAX_FILE_MB,
    allowed_hosts: Iterable[str] = (),
) -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch` that keep the demo private and bounded.

    No share link, no analytics or monitoring endpoint, no MCP server, nothing served beyond
    Gradio's own upload cache (no `allowed_paths`), the data folder explicitly blocked, and an
    upload size limit enforced by the server. Bound to loopback, only requests whose `Host`
    names this machine, or one of `allowed_hosts`, are answered (`cde_rag.hosts`): a web page
    cannot reach the demo through DNS rebinding.
    """
    import gradio as gr
    from starlette.middleware import Middleware

    check = Middleware(HostCheckMiddleware, allowed=hosts_for(host, allowed_hosts))
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "inbrowser": False,
        "max_file_size": f"{int(max_file_mb)}mb",
        "allowed_paths": [],
        "blocked_paths": [str(Path(data_dir).expanduser().resolve())],
        "enable_monitoring": False,
        "mcp_server": False,
        "ssr_mode": False,
        "pwa": False,
        "show_error": True,
        "footer_links": ["api", "settings"],
        "theme": gr.themes.Soft(
            font=["ui-sans-serif", "system-ui", "sans-serif"],
            font_mono=["ui-monospace", "monospace"],
        ),
        "css": CSS,
        "app_kwargs": {"middleware": [check]},
    }


def launch(
    demo: gr.Blocks,
    data_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_file_mb: int = DEFAULT_MAX_FILE_MB,
    allowed_hosts: Iterable[str] = (),
    prevent_thread_lock: bool = False,
) -> gr.Blocks:
    """Start `demo` with `launch_options`; warns on stderr when bound beyond loopback."""
    warning = warn_if_exposed(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    demo.queue()
    demo.launch(
        prevent_thread_lock=prevent_thread_lock,
        **launch_options(
            data_dir, host=host, port=port, max_file_mb=max_file_mb, allowed_hosts=allowed_hosts
        ),
    )
    return demo
