"""`cde-rag index --engine local|ray`, `load` and `query --lancedb`: each engine's and store's
options with it only, refused as usage errors (exit 2, with the usage) before anything runs.
The commands themselves run end to end in tests/test_ray.py."""

from __future__ import annotations

import pytest

from cde_rag.cli import main
from cde_rag.cli._common import CHROMA_URL_ENV


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["index", "d", "--engine", "ray"], "--engine ray needs --out PATH"),
        (
            ["index", "d", "--engine", "ray", "--out", "o", "-c", "docs", "--no-cache"],
            "--collection, --no-cache apply only with --engine local.",
        ),
        (["index", "d", "--engine", "ray", "--out", "o", "--db", "x"], "--db applies only with"),
        (["index", "d", "--engine", "ray", "--out", "o", "--device", "cpu"], "--device applies"),
        (["index", "d", "-c", "docs", "--out", "o"], "--out applies only with --engine ray."),
        (
            ["index", "d", "-c", "docs", "--actors", "2", "--num-gpus", "1"],
            "--actors, --num-gpus apply only with --engine ray.",
        ),
        (["index", "d"], "required: --collection (or --engine ray --out PATH)"),
        (["index", "d", "--engine", "spark"], "invalid choice: 'spark'"),
        (["index", "d", "--engine", "ray", "--out", "o", "--actors", "3:1"], "MIN must not"),
        (["index", "d", "--engine", "ray", "--out", "o", "--actors", "0"], "positive integer"),
        (["index", "d", "--engine", "ray", "--out", "o", "--num-cpus", "0"], "above 0"),
        (["index", "d", "-c", "docs", "--max-mb", "0"], "--max-mb: must be a number above 0"),
        (["index", "d", "-c", "docs", "--batch-size", "0"], "--batch-size: must be a positive"),
        (["index", "d", "-c", "docs", "--chunk-size", "x"], "--chunk-size: must be an integer"),
        (["query", "q", "-c", "t", "--lancedb", "l", "--db", "d"], "not allowed with argument"),
        (["load", "p", "-c", "t", "--lancedb", "l", "--db", "d"], "not allowed with argument"),
        (
            ["load", "p", "-c", "t", "--lancedb", "l", "--model", "m"],
            "--model apply to loading into Chroma",
        ),
    ],
)
def test_engine_and_store_options_that_do_not_fit_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: cde-rag {argv[0]}") and message in err, err


def test_a_chroma_url_from_the_environment_is_no_choice_of_engine(monkeypatch, tmp_path, capsys):
    """$CDE_RAG_CHROMA_URL sets --chroma-url's default: the Ray engine runs (and here finds
    nothing to embed, before starting Ray or writing anything)."""
    pytest.importorskip("ray")
    monkeypatch.setenv(CHROMA_URL_ENV, "http://127.0.0.1:9")
    out = tmp_path / "out"
    argv = ["index", str(tmp_path / "none"), "--engine", "ray", "--out", str(out)]
    assert main([*argv, "--progress", "none"]) == 1
    assert "Nothing to embed" in capsys.readouterr().err
    assert not out.exists()
