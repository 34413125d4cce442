"""How the command line feels: a bare `cde-rag` helps, typos get a suggestion, usage errors exit
with 2 and runtime errors with 1, and every one of them is reported before torch or
transformers is imported (so in well under a second), a taken port included."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from cde_rag.cli import main

HEAVY = ("torch", "transformers", "chromadb", "gradio", "ranx")

# Runs `main(argv)` in a fresh interpreter, then reports the exit code and which heavy
# modules had been imported by then.
PROBE = textwrap.dedent(
    """
    import json, sys
    from cde_rag.cli import main
    try:
        code = main(json.loads(sys.argv[1]))
    except SystemExit as exc:
        code = exc.code
    heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
    print("PROBE " + json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
    """
)


def probe(*argv: str) -> tuple[int, list[str], str, str]:
    """(exit code, heavy modules imported, stdout, stderr less the probe line)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.splitlines()
    result = json.loads(lines[-1].removeprefix("PROBE "))
    return result["code"], result["heavy"], done.stdout, "\n".join(lines[:-1])


@pytest.fixture
def taken_port():
    """A port something listens on, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_bare_command_prints_the_help_and_exits_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: cde-rag") and "    index" in out and "    eval" in out
    code, heavy, stdout, _ = probe()
    assert (code, heavy) == (2, []) and stdout.startswith("usage: cde-rag")


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["idnex", "docs"], "(did you mean 'index'?)"),
        (["qeury", "x"], "(did you mean 'query'?)"),
        (["index", "docs", "-c", "a", "--chunksize", "5"], "(did you mean '--chunk-size'?)"),
        (["query", "x", "-c", "a", "--top_k", "3"], "(did you mean '--top-k'?)"),
        (["context", "fti"], "(did you mean 'fit'?)"),
        (["context", "fit", "d", "-o", "x", "--chunk-sise=3"], "(did you mean '--chunk-size'?)"),
    ],
)
def test_a_typo_gets_the_nearest_command_or_option(capsys, argv, hint):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cde-rag") and err.rstrip().endswith(hint), err


def test_no_suggestion_for_a_word_like_no_command(capsys):
    with pytest.raises(SystemExit):
        main(["zzzzzz"])
    assert "did you mean" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["idnex"], 2, "did you mean 'index'?"),
        (["query", "x", "-c", "a", "--chroma-url", "localhost:8000"], 2, "http:// or https://"),
        (["index", "d", "-c", "a", "--chunk-size", "0"], 2, "must be a positive integer"),
        (["index", "d", "-c", "a", "--chunk-overlap", "900", "--chunk-size", "900"], 2, "(899)"),
        (["demo", "--chunk-size", "100", "--chunk-overlap", "100"], 2, "(99), got 100"),
        (["context", "fit", "d", "-o", "x", "--seed", "-1"], 2, "must be 0 or more, got -1"),
        (["bench", "--docs", "0"], 2, "must be a positive integer, got 0"),
        (["bench", "--min-tokens", "90", "--max-tokens", "80"], 2, "must not exceed"),
        (["eval"], 2, "give a BEIR folder DATA or --sample"),
        (["eval", "d", "--sample"], 2, "give a BEIR folder DATA or --sample"),
        (["eval", "--sample", "--seeds", "1,1"], 2, "distinct comma-separated"),
        (["eval", "--sample", "--k", "0"], 2, "must be a positive integer"),
        (["serve", "--port", "0"], 2, "port must be between 1 and 65535"),
        (["serve", "--host", "no-such-host.invalid"], 1, "check --host"),
    ],
)
def test_errors_come_before_torch_loads(argv, code, message):
    got, heavy, _, err = probe(*argv)
    assert got == code, err
    assert heavy == []
    assert message in err and "Traceback" not in err
    # Usage errors show the usage; runtime errors are one line.
    if code == 2:
        assert err.startswith("usage: cde-rag")
    else:
        assert err.count("\n") == 0 and err.startswith(f"cde-rag {argv[0]}: error: ")


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_taken_port_names_port_before_the_model_loads(taken_port, tmp_path, command):
    # The model path does not exist: reaching the model would be another error.
    argv = [command, "--port", str(taken_port), "--model", str(tmp_path / "no-model")]
    code, heavy, stdout, err = probe(*argv)
    assert (code, heavy, stdout) == (1, [], "")
    assert err.startswith(f"cde-rag {command}: error: port {taken_port} on 127.0.0.1 is already")
    assert "--port" in err and "\n" not in err
    suggested = int(err.rsplit("--port ", 1)[1].rstrip("."))
    assert suggested > taken_port
    with socket.socket() as sock:  # the port suggested is free indeed
        sock.bind(("127.0.0.1", suggested))


def test_a_port_in_time_wait_is_not_taken(tmp_path):
    """A server stopped a moment ago leaves TIME_WAIT sockets; servers (uvicorn, so the API
    and the demo) bind with SO_REUSEADDR, and so does the check: the port counts as free."""
    from cde_rag.cli._common import check_port_free

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its side enters TIME_WAIT
        client.close()
    check_port_free("127.0.0.1", port)
