"""`cde-rag context show` never lets text stored in a context drive the terminal (issue 12,
item 13): escape sequences in the minicorpus, or in a file name, are printed as visible escapes.
"""

from __future__ import annotations

import json

import pytest

from cde_rag.cli import main
from cde_rag.cli._text import terminal_safe, terminal_safe_json

HOSTILE = [
    "\x1b]0;pwned title\x07 sets the window title",
    "\x1b[2J\x1b[H clears the screen",
    "\x9b31m a one-character CSI (C1)",
    "bidi \u202etxt.exe\u202c override",
    "bell \x07 and delete \x7f",
]
RAW = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x202E, 0x202C]} - {"\n"}


@pytest.fixture(scope="module")
def hostile_context(tiny_model, tmp_path_factory):
    texts = HOSTILE + [f"plain document {i}" for i in range(tiny_model.corpus_size - len(HOSTILE))]
    path = tmp_path_factory.mktemp("ctx") / "ctx\x1b[31m.safetensors"
    return tiny_model.context(texts).save(path)


def _raw_controls(text: str) -> set[str]:
    return set(text) & RAW


def test_context_show_escapes_control_characters(hostile_context, capsys):
    assert main(["context", "show", str(hostile_context), "--sample", "5"]) == 0
    out = capsys.readouterr().out
    assert _raw_controls(out) == set(), sorted(_raw_controls(out))
    assert "\\x1b]0;pwned title\\x07 sets the window title" in out
    assert "\\x9b31m a one-character CSI" in out
    assert "bidi \\u202etxt.exe\\u202c override" in out
    assert "ctx\\x1b[31m.safetensors" in out


def test_context_show_json_escapes_them_and_still_parses(hostile_context, capsys):
    assert main(["context", "show", str(hostile_context), "--json", "--sample", "5"]) == 0
    out = capsys.readouterr().out
    assert _raw_controls(out) == set(), sorted(_raw_controls(out))
    info = json.loads(out)
    assert info["sample"] == HOSTILE
    assert info["where"] == str(hostile_context)


def test_terminal_safe_keeps_ordinary_text_and_round_trips_json():
    text = "Grüße, 東京, emoji 🙂, tab\there"
    assert terminal_safe(text) == "Grüße, 東京, emoji 🙂, tab\\x09here"
    value = {"k": [*HOSTILE, text]}
    dumped = terminal_safe_json(value)
    assert _raw_controls(dumped) == set() and json.loads(dumped) == value
    assert "東京" in dumped


def test_one_line_errors_escape_what_they_quote(tmp_path, capsys):
    """A runtime error quotes a path (or a document, a URL) as given: printed escaped."""
    missing = tmp_path / "gone\x1b]0;pwned\x07\u202e.safetensors"
    assert main(["context", "show", str(missing)]) == 1
    err = capsys.readouterr().err
    assert _raw_controls(err.rstrip("\n")) == set(), sorted(_raw_controls(err))
    assert err.startswith("cde-rag context: error: No context file at ")
    assert "gone\\x1b]0;pwned\\x07\\u202e.safetensors" in err


def test_usage_errors_escape_what_they_quote(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["context", "show", "x", "--sampel\x1b[2J", "3"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert _raw_controls(err.replace("\n", "")) == set(), sorted(_raw_controls(err))
    assert "--sampel\\x1b[2J" in err and "(did you mean '--sample'?)" in err


def test_eval_prints_the_dataset_name_escaped(tiny_path, tmp_path, capsys):
    """A BEIR folder's name is the dataset's name, shown in the phase lines and the table."""
    from test_eval import make_dataset, write_beir

    folder = write_beir(tmp_path / "toy\x1b]0;pwned\x07", *make_dataset())
    code = main(
        [
            "eval", str(folder), "--model", tiny_path, "--device", "cpu", "--seeds", "1",
            "--no-fallback", "--output", str(tmp_path / "report"),
        ]
    )  # fmt: skip
    assert code == 0
    out, err = capsys.readouterr()
    assert _raw_controls(out.replace("\n", "")) == set(), sorted(_raw_controls(out))
    assert out.startswith("toy\\x1b]0;pwned\\x07 (test): 12 documents")
    assert "\x1b]0;pwned" not in err and "cde-rag eval: toy\\x1b]0;pwned\\x07 (test)" in err
