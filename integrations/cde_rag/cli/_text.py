"""User text made safe for a terminal.

Stored documents, file names and context provenance come from outside. Printed raw, an ESC or
CSI sequence in them drives the user's terminal (rewrites the title, hides or fakes output,
on some terminals worse), and bidi overrides reorder what is shown. Commands pass such text
through these functions before printing it.
"""

from __future__ import annotations

import json
from typing import Any

# C0 controls, DEL, C1 controls (U+009B is a one-character CSI), and the bidi embeddings,
# overrides and isolates ("Trojan Source").
_UNSAFE = [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _UNSAFE}
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _UNSAFE if code >= 0x7F}


def terminal_safe(text: str) -> str:
    """`text` with every control character written as a visible escape (ESC -> `\\x1b`)."""
    return text.translate(_ESCAPES)


def terminal_safe_json(value: Any, **options: Any) -> str:
    """`json.dumps(value, ensure_ascii=False, **options)`, with the characters JSON leaves raw
    (DEL, C1, bidi controls) escaped too; it parses back to the same value."""
    return json.dumps(value, ensure_ascii=False, **options).translate(_JSON_ESCAPES)
