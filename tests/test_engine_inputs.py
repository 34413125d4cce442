"""Text the tokenizer cannot take (issue 12 item 5): a lone UTF-16 surrogate, as broken JSON
escapes or mis-decoded files produce, is an `InputError` naming the item, through the engine
and both framework adapters, never a bare `TypeError` from the tokenizer."""

from __future__ import annotations

import json

import pytest

from cde_rag import InputError

LONE = json.loads('"broken \\ud800 escape"')  # what json.loads gives for a lone \ud800
assert "\ud800" in LONE
GOOD = "a fine text"


@pytest.fixture(scope="module")
def lc_embeddings(tiny_model, tiny_context):
    from cde_rag.langchain import CDEEmbeddings

    return CDEEmbeddings(model=tiny_model, context=tiny_context)


@pytest.fixture(scope="module")
def li_embedding(tiny_model, tiny_context):
    from cde_rag.llama_index import CDEEmbedding

    return CDEEmbedding(model=tiny_model, context=tiny_context)


@pytest.mark.parametrize("method", ["embed_documents", "embed_queries"])
def test_engine_names_the_item(tiny_model, tiny_context, method):
    embed = getattr(tiny_model, method)
    with pytest.raises(InputError, match=r"texts\[2\] has a lone UTF-16 surrogate \(U\+D800\)"):
        embed([GOOD, GOOD, LONE], context=tiny_context)
    # The same call without the bad item still works: nothing was left half-done.
    assert embed([GOOD, GOOD], context=tiny_context).shape == (2, tiny_model.dim)


def test_fit_context_names_the_item(tiny_model):
    with pytest.raises(InputError, match=r"corpus\[1\] has a lone UTF-16 surrogate"):
        tiny_model.fit_context([GOOD, LONE, GOOD])
    with pytest.raises(InputError, match=r"minicorpus\[0\] has a lone"):
        tiny_model.context([LONE] * tiny_model.corpus_size)


def test_surrogate_pairs_written_as_one_character_are_fine(tiny_model, tiny_context):
    """A real astral character (one code point) is valid text, unlike half of a pair."""
    emoji = json.loads('"smile \\ud83d\\ude00"')
    assert len(emoji) == 7
    assert tiny_model.embed_documents([emoji], context=tiny_context).shape == (1, tiny_model.dim)


def test_langchain_names_the_item(lc_embeddings):
    with pytest.raises(InputError, match=r"\[1\] has a lone UTF-16 surrogate"):
        lc_embeddings.embed_documents([GOOD, LONE])
    with pytest.raises(InputError, match="lone UTF-16 surrogate"):
        lc_embeddings.embed_query(LONE)
    assert len(lc_embeddings.embed_query(GOOD)) == lc_embeddings.model.dim


def test_llama_index_names_the_item(li_embedding):
    with pytest.raises(InputError, match=r"\[1\] has a lone UTF-16 surrogate"):
        li_embedding.get_text_embedding_batch([GOOD, LONE])
    with pytest.raises(InputError, match="lone UTF-16 surrogate"):
        li_embedding.get_query_embedding(LONE)
    assert len(li_embedding.get_query_embedding(GOOD)) == li_embedding.model.dim
