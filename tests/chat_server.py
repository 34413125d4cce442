"""A tiny OpenAI-compatible chat server for tests: `with chat_server.running() as base_url:`.

It binds 127.0.0.1 on a free port, prints `PORT <n>` on stdout, and answers
POST /v1/chat/completions with a canned completion that names the first source it was given
and cites it as [1], so a test can tell the sources really reached the server. Model
"broken", or a question containing "(fail)", gets HTTP 500; "silent" gets an empty answer.
Model "obedient" behaves like an LLM that follows instructions planted in a document: when a
source holds text between <<< and >>>, that text is the answer, verbatim.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()
INSTRUCTION = re.compile(r"<<<(.*?)>>>", re.DOTALL)


@app.post("/v1/chat/completions")
async def completions(request: Request) -> JSONResponse:
    body = await request.json()
    model = body.get("model")
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    question = user.rsplit("\nQuestion: ", 1)[-1]
    if model == "broken" or "(fail)" in question:
        return JSONResponse({"error": {"message": "model is broken"}}, status_code=500)
    first = re.search(r"^\[1\] \((.+), chunk (\d+)\)$", user, re.MULTILINE)
    named = first.group(1) if first else "no source"
    content = "" if model == "silent" else f"The answer is in {named} [1]."
    planted = INSTRUCTION.search(user)
    if model == "obedient" and planted:
        content = planted.group(1).strip()
    return JSONResponse(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": len(user.split()),
                "completion_tokens": 8,
                "total_tokens": 8,
            },
        }
    )


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


@contextmanager
def running() -> Iterator[str]:
    """Start this server in a subprocess; yields its base URL (http://127.0.0.1:PORT/v1)."""
    proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"chat server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
