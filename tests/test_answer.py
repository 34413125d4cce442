"""The answer builders: extractive sentences with citations, and a real OpenAI-compatible server."""

from __future__ import annotations

import re

import pytest
from chat_server import running as running_chat_server
from hypothesis import given
from hypothesis import strategies as st

from cde_rag.answer import (
    MAX_SENTENCE_CHARS,
    AnswerError,
    LLMConfig,
    Source,
    cited_numbers,
    extractive_answer,
    llm_answer,
    llm_messages,
    split_sentences,
    terms,
    unknown_citations,
)

SOURCES = [
    Source(
        1,
        "pets.md",
        0,
        0.91,
        "# Pets\nCats sleep most of the day. Dogs need a walk twice a day.\n"
        "A parrot can live for decades.",
    ),
    Source(
        2,
        "geo.txt",
        4,
        0.55,
        "Paris is the capital of France. The Seine flows through Paris! Lyon is known for food.",
    ),
]


def test_split_sentences_on_punctuation_and_lines():
    assert split_sentences('He said "stop." Then he left.\n- item one\n\n  ') == [
        'He said "stop."',
        "Then he left.",
        "- item one",
    ]


def test_split_sentences_joins_wrapped_lines_but_keeps_headings_and_items():
    text = (
        "# Brewing\nGreen tea likes water at\n80 degrees. Black tea\nwants 95.\n"
        "- one item\n  wrapped\n- two\n\nNew paragraph"
    )
    assert split_sentences(text) == [
        "# Brewing",
        "Green tea likes water at 80 degrees.",
        "Black tea wants 95.",
        "- one item wrapped",
        "- two",
        "New paragraph",
    ]


def test_split_sentences_keeps_abbreviations_and_initials_inside():
    text = (
        "Mount St. Helens erupted in 1980. Dr. Smith met J. R. R. Tolkien at 5 p.m. on a "
        "Monday. Use e.g. green tea, approx. five grams. See Fig. 2 and No. 5. Is it the "
        "Nile? It is the longest river."
    )
    assert split_sentences(text) == [
        "Mount St. Helens erupted in 1980.",
        "Dr. Smith met J. R. R. Tolkien at 5 p.m. on a Monday.",
        "Use e.g. green tea, approx. five grams.",
        "See Fig. 2 and No. 5.",
        "Is it the Nile?",
        "It is the longest river.",
    ]


@given(st.text(alphabet=st.sampled_from(list("aB. !?\"')e.gSt5…")), max_size=80))
def test_split_sentences_loses_and_reorders_nothing(line):
    """On one line, sentences are the text's words in order, cut only at sentence ends."""
    assert " ".join(split_sentences(line)) == " ".join(line.split())


def test_extractive_answer_quotes_only_whole_sentences_of_cut_chunks():
    """A chunk after the first can start inside a sentence, even inside a word, and any chunk
    can end inside one: those pieces are never quoted as sentences."""
    sources = [
        Source(
            1,
            "rivers.txt",
            3,
            0.9,
            "e? It is the longest river in Africa. The river Nile floods every summer, "
            "and its river valley was farmed for thousands of years before the",
        ),
        Source(2, "rivers.txt", 4, 0.8, "ater of the river. Rivers in Europe are shorter."),
    ]
    answer = extractive_answer("Which river is the longest river?", sources)
    quoted = [part.strip() for part in re.split(r"\[\d+\]", answer) if part.strip()]
    assert quoted == ["It is the longest river in Africa.", "Rivers in Europe are shorter."]


def test_extractive_answer_keeps_whole_first_chunks_and_titles():
    sources = [
        Source(1, "a.md", 0, 0.9, "A short history of tea\n\nTea came from China."),
        Source(2, "a.md", 2, 0.8, "Green tea likes cool water.\n\n- steep green tea briefly"),
    ]
    answer = extractive_answer("history of green tea", sources, max_sentences=3)
    assert "A short history of tea [1]" in answer
    assert "Green tea likes cool water. [2]" in answer
    assert "- steep green tea briefly [2]" in answer


def test_extractive_answer_falls_back_to_marked_pieces():
    sources = [Source(1, "log", 2, 0.9, "rror while brewing the tea and then the pot broke and")]
    answer = extractive_answer("brewing tea", sources)
    assert answer == "…rror while brewing the tea and then the pot broke and… [1]"


def test_terms_drop_stopwords_and_fold_plurals():
    assert terms("What are the Cats doing in the glass houses?") == {"cat", "glass", "house"}


def test_extractive_answer_picks_matching_sentences_with_their_citation():
    answer = extractive_answer("What is the capital of France?", SOURCES)
    assert answer.startswith("Paris is the capital of France. [2]")
    assert cited_numbers(answer) == [2]
    answer = extractive_answer("How long does a parrot live?", SOURCES)
    assert answer.split(" [")[0] == "A parrot can live for decades."
    assert cited_numbers(answer)[0] == 1


def test_extractive_answer_weights_rare_words_over_common_ones():
    sources = [
        Source(1, "a", 0, 0.9, "Paris hotels are busy. Paris museums open late. Paris is old."),
        Source(2, "b", 0, 0.8, "Lyon has the best museums outside the capital."),
    ]
    # "paris" is in three sentences, "lyon" in one: the Lyon sentence wins although both match
    # one word of the question, and although it comes from the lower-ranked source.
    answer = extractive_answer("Paris or Lyon?", sources, max_sentences=1)
    assert answer == "Lyon has the best museums outside the capital. [2]"


def test_extractive_answer_cites_each_sentence_and_respects_the_limit():
    answer = extractive_answer("cats dogs Paris Seine parrot", SOURCES, max_sentences=2)
    assert answer.count("[") == 2
    assert set(cited_numbers(answer)) <= {1, 2}
    with pytest.raises(ValueError, match="max_sentences"):
        extractive_answer("x", SOURCES, max_sentences=0)


def test_extractive_answer_quotes_overlapping_chunks_once():
    text = "Tea grows in Assam. It is picked by hand."
    sources = [Source(1, "t", 0, 0.9, text), Source(2, "t", 1, 0.8, text)]
    answer = extractive_answer("Where does tea grow?", sources)
    assert answer == "Tea grows in Assam. [1]"


def test_extractive_answer_without_overlap_says_so_and_quotes_top_chunk():
    answer = extractive_answer("zebra xylophone", SOURCES)
    assert "shares a word" in answer
    assert answer.endswith("Cats sleep most of the day. [1]")


def test_extractive_answer_skips_headings_unless_nothing_else_is_there():
    answer = extractive_answer("pets", SOURCES)  # only the heading says "pets"
    assert "# Pets" not in answer and "shares a word" in answer
    only = [Source(1, "t.md", 0, 0.9, "# Pets")]
    assert extractive_answer("pets", only) == "# Pets [1]"


def test_extractive_answer_with_nothing_retrieved():
    assert "index" in extractive_answer("anything", [])


def test_extractive_answer_cuts_sentences_without_punctuation():
    sources = [Source(1, "log", 0, 0.9, "error " * 400)]
    answer = extractive_answer("error", sources)
    assert len(answer) <= MAX_SENTENCE_CHARS + len(" [1]")
    assert answer.endswith("… [1]")


def test_citation_helpers():
    assert cited_numbers("a [2] b [1][2] c [10]") == [2, 1, 10]
    assert unknown_citations("a [2] b [7]", SOURCES) == [7]


def test_llm_config_from_flags_and_environment():
    assert LLMConfig.from_settings(env={}) is None
    env = {
        "CDE_RAG_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "CDE_RAG_LLM_MODEL": "m",
        "CDE_RAG_LLM_API_KEY": "secret-key",
    }
    config = LLMConfig.from_settings(env=env)
    assert config == LLMConfig("http://127.0.0.1:9/v1", "m", "secret-key")
    assert "secret-key" not in repr(config)
    assert LLMConfig.from_settings(model="other", env=env).model == "other"
    with pytest.raises(ValueError, match="CDE_RAG_LLM_BASE_URL"):
        LLMConfig.from_settings(model="m", env={})
    with pytest.raises(ValueError, match="CDE_RAG_LLM_MODEL"):
        LLMConfig.from_settings(base_url="http://x/v1", env={})
    with pytest.raises(ValueError, match="http://"):
        LLMConfig.from_settings(base_url="127.0.0.1:8000", model="m", env={})


def test_llm_messages_number_the_sources():
    messages = llm_messages("Where is Paris?", SOURCES)
    assert messages[0]["role"] == "system" and "[1]" in messages[0]["content"]
    user = messages[1]["content"]
    assert "[1] (pets.md, chunk 0)\n# Pets" in user
    assert "[2] (geo.txt, chunk 4)\nParis is the capital" in user
    assert user.endswith("Question: Where is Paris?")


@pytest.fixture(scope="module")
def chat_server():
    """A real uvicorn server speaking the OpenAI chat API, on a free loopback port."""
    with running_chat_server() as base_url:
        yield base_url


@pytest.mark.server
def test_llm_answer_from_a_real_server_cites_the_sources(chat_server):
    config = LLMConfig(chat_server, "test-model", "k")
    answer = llm_answer("Where is Paris?", SOURCES, config)
    # The server names the source it received as [1]: the prompt reached it intact.
    assert answer == "The answer is in pets.md [1]."
    assert unknown_citations(answer, SOURCES) == []


@pytest.mark.server
def test_llm_answer_reports_server_errors(chat_server):
    with pytest.raises(AnswerError) as failed:
        llm_answer("q", SOURCES, LLMConfig(chat_server, "broken"))
    # Once each: the endpoint, the status and the server's own message.
    assert str(failed.value) == f"LLM endpoint {chat_server} answered HTTP 500: model is broken"
    with pytest.raises(AnswerError, match="empty answer"):
        llm_answer("q", SOURCES, LLMConfig(chat_server, "silent"))


def test_llm_answer_reports_an_unreachable_endpoint():
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AnswerError, match="failed"):
        llm_answer("q", SOURCES, LLMConfig(f"http://127.0.0.1:{port}/v1", "m"), timeout=5)
