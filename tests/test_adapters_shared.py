"""What the LangChain and LlamaIndex adapters share: one progress-bar rule, one value per setting,
`from_chroma`, and no adapter importing another."""

from __future__ import annotations

import re
import subprocess
import sys

import chromadb
import pytest
import torch

from cde_rag.langchain import CDEEmbeddings
from cde_rag.llama_index import CDEEmbedding
from cde_rag.progress import PROGRESS_MIN_TEXTS, progress_bar_enabled

MANY = [f"Note {i}: the river rose by {i} centimetres overnight." for i in range(70)]
FEW = MANY[:6]


@pytest.fixture(scope="module")
def context(tiny_model, golden):
    return tiny_model.fit_context(golden["documents"])


def _bars(capsys) -> list[str]:
    """The progress bars' final states written to stderr, e.g. '3/3'."""
    return re.findall(r"Embedding documents: 100%\|[^|]*\| (\d+/\d+)", capsys.readouterr().err)


# -- one progress-bar rule ----------------------------------------------------------------------


def test_the_first_setting_given_decides_else_long_work_shows_bars():
    assert progress_bar_enabled(None, count=PROGRESS_MIN_TEXTS)
    assert not progress_bar_enabled(None, None, count=PROGRESS_MIN_TEXTS - 1)
    assert not progress_bar_enabled(False, True, count=10_000)
    assert progress_bar_enabled(None, True, count=0)


@pytest.mark.parametrize(
    ("setting", "texts", "shown"),
    [(None, MANY, True), (None, FEW, False), (False, MANY, False), (True, FEW, True)],
)
def test_llama_index_show_progress_bar_is_obeyed(
    tiny_model, context, capsys, setting, texts, shown
):
    emb = CDEEmbedding(
        model=tiny_model, context=context, embed_batch_size=100, show_progress_bar=setting
    )
    emb.get_text_embedding_batch(texts)
    assert bool(_bars(capsys)) == shown


@pytest.mark.parametrize(
    ("options", "texts", "shown"),
    [
        ({}, MANY, True),
        ({"show_progress": False}, MANY, False),
        ({"encode_kwargs": {"show_progress": False}}, MANY, False),
        ({"show_progress": True}, FEW, True),
        ({"encode_kwargs": {"show_progress": True}}, FEW, True),
    ],
)
def test_langchain_show_progress_is_obeyed(tiny_model, context, capsys, options, texts, shown):
    emb = CDEEmbeddings(model=tiny_model, context=context, batch_size=100, **options)
    emb.embed_documents(texts)
    assert bool(_bars(capsys)) == shown


# -- one value per setting (CDEEmbeddings) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "where", "other"),
    [
        ("device", "cpu", "model_kwargs", "meta"),  # a loading setting
        ("dtype", "float32", "model_kwargs", "bfloat16"),
        ("batch_size", 4, "encode_kwargs", 8),  # an embedding setting
        ("show_progress", True, "encode_kwargs", False),
    ],
)
def test_a_setting_given_two_ways_with_two_values_is_refused(
    tiny_path, context, field, value, where, other
):
    with pytest.raises(ValueError, match=rf"{field} is given twice.*{where}\['{field}'\]"):
        CDEEmbeddings(model=tiny_path, context=context, **{field: value, where: {field: other}})
    agreeing = CDEEmbeddings(
        model=tiny_path, context=context, **{field: value, where: {field: value}}
    )
    assert agreeing._setting(field) == value


@pytest.mark.parametrize(
    "options",
    [
        {"dtype": "bfloat16", "batch_size": 2},
        {"model_kwargs": {"dtype": "bfloat16"}, "encode_kwargs": {"batch_size": 2}},
    ],
)
def test_either_spelling_of_a_setting_takes_effect(tiny_path, context, capsys, options):
    emb = CDEEmbeddings(model=tiny_path, context=context, show_progress=True, **options)
    assert emb.model.dtype == torch.bfloat16
    emb.embed_documents(FEW)
    bars = _bars(capsys)
    assert bars and set(bars) == {"3/3"}  # 6 texts, 2 a batch


# -- from_chroma, and the old helpers ------------------------------------------------------------


@pytest.fixture
def collection(tmp_path, tiny_model, golden):
    from cde_rag.chroma import add_documents, create_collection

    client = chromadb.PersistentClient(
        str(tmp_path / "db"), settings=chromadb.Settings(anonymized_telemetry=False)
    )
    created = create_collection(client, "docs", model=tiny_model, corpus=golden["documents"])
    add_documents(created, golden["documents"])
    return client.get_collection("docs")  # as a framework user would hold it


@pytest.mark.parametrize(
    ("adapter", "options"),
    [(CDEEmbeddings, {"batch_size": 5}), (CDEEmbedding, {"embed_batch_size": 5})],
)
def test_from_chroma_uses_the_collections_model_and_context(collection, adapter, options):
    from cde_rag.chroma import get_context, get_model

    emb = adapter.from_chroma(collection, **options)
    assert type(emb) is adapter and emb._batch_size == 5
    assert emb.context == get_context(collection) and emb.model is get_model(collection)


def test_the_old_chroma_helpers_warn_and_still_work(collection):
    from cde_rag.chroma import get_context, langchain_embeddings, llama_index_embedding

    for helper, adapter, new in (
        (langchain_embeddings, CDEEmbeddings, "CDEEmbeddings.from_chroma"),
        (llama_index_embedding, CDEEmbedding, "CDEEmbedding.from_chroma"),
    ):
        with pytest.warns(DeprecationWarning, match=new) as caught:
            emb = helper(collection)
        assert caught[0].filename == __file__  # points at the caller
        assert type(emb) is adapter and emb.context == get_context(collection)


# -- adapters do not import each other -------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("cde_rag.chroma", ["cde_rag.langchain", "cde_rag.llama_index", "langchain_core"]),
        ("cde_rag.langchain", ["cde_rag.chroma", "cde_rag.llama_index", "chromadb"]),
        ("cde_rag.llama_index", ["cde_rag.chroma", "cde_rag.langchain", "chromadb"]),
    ],
)
def test_importing_one_adapter_imports_no_other(module, absent):
    code = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
