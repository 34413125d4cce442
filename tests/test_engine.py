"""The engine reproduces the authors' reference and honours the CDEModel/CorpusContext contract."""

from __future__ import annotations

import numpy as np
import pytest

from cde_rag import CDEModel, InputError
from cde_rag.context import sample_minicorpus
from cde_rag.errors import ContextError, NotFittedError
from cde_rag.reference import PaddedReference
from cde_rag.tokenization import DOCUMENT_PREFIX, QUERY_PREFIX

from spec_reference import SpecReference

TOL = 1e-4


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_dataset_embeddings_match_golden(tiny_model, golden, batch_size):
    ctx = tiny_model.context(golden["minicorpus"], batch_size=batch_size)
    np.testing.assert_allclose(ctx.embeddings, golden["dataset_embeddings"], atol=TOL, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_document_and_query_embeddings_match_golden(tiny_model, tiny_context, golden, batch_size):
    docs = tiny_model.embed_documents(
        golden["documents"], context=tiny_context, batch_size=batch_size
    )
    queries = tiny_model.embed_queries(
        golden["queries"], context=tiny_context, batch_size=batch_size
    )
    np.testing.assert_allclose(docs, golden["document_embeddings"], atol=TOL, rtol=0)
    np.testing.assert_allclose(queries, golden["query_embeddings"], atol=TOL, rtol=0)
    assert docs.dtype == np.float32 and docs.shape == (len(golden["documents"]), tiny_model.dim)


def test_results_follow_input_order_not_length_order(tiny_model, tiny_context, golden):
    docs = golden["documents"]
    reordered = docs[::-1]
    forward = tiny_model.embed_documents(docs, context=tiny_context, batch_size=2)
    backward = tiny_model.embed_documents(reordered, context=tiny_context, batch_size=2)
    np.testing.assert_allclose(backward, forward[::-1], atol=1e-6)


def test_model_shape_properties(tiny_model, golden):
    assert tiny_model.corpus_size == len(golden["minicorpus"]) == 32
    assert tiny_model.dim == len(golden["document_embeddings"][0])
    assert "tiny-cde-v2" in repr(tiny_model)


def test_long_document_is_truncated_to_512_tokens(tiny_model, tiny_context, golden):
    long_doc = max(golden["documents"], key=len)
    assert tiny_model.count_tokens([long_doc])[0] == 512
    # Anything after the 512th token cannot change the embedding, even a 10 MB tail.
    huge = long_doc + " tail" * 2_000_000
    a, b = tiny_model.embed_documents([long_doc, huge], context=tiny_context)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "backbone"),
    [
        ({"pool_ignore_instruction_tokens": True}, {"local_attention": 8}),
        ({"pool_ignore_contextual_tokens": False}, {"local_attention": 8}),
        (
            {"pool_ignore_contextual_tokens": False, "pool_ignore_instruction_tokens": True},
            {"local_attention": 8},
        ),
        ({"limit_layers": 2, "limit_layers_first_stage": 3}, {"local_attention": 8}),
        (
            {"pool_ignore_instruction_tokens": True},
            {
                "num_attention_heads": 8,
                "global_attn_every_n_layers": 2,
                "local_attention": 6,
                "global_rope_theta": 80000.0,
                "local_rope_theta": 500.0,
            },
        ),
    ],
    ids=[
        "ignore-instruction",
        "pool-context",
        "pool-context-ignore-instruction",
        "limit-layers",
        "other-heads-window-rope",
    ],
)
def test_config_variants_follow_the_spec(make_checkpoint, golden, overrides, backbone):
    folder = make_checkpoint(config=overrides, backbone_config=backbone)
    model = CDEModel.from_pretrained(folder, device="cpu")
    reference = SpecReference(folder)
    ctx = model.context(golden["minicorpus"], batch_size=5)
    expected_ctx = reference.dataset_embeddings(golden["minicorpus"])
    np.testing.assert_allclose(ctx.embeddings, expected_ctx, atol=TOL, rtol=0)
    texts = golden["queries"] + golden["documents"][:4]
    got = model.embed_queries(texts, context=ctx, batch_size=3)
    want = reference.embed(texts, ctx.embeddings, "search_query: ")
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # The package's own padded reference agrees on every variant too.
    padded = PaddedReference(model)
    stage = model._load_first_stage()
    minicorpus = padded.tokenize(golden["minicorpus"], DOCUMENT_PREFIX)
    first = padded.dataset_embeddings(stage, minicorpus, 0, len(golden["minicorpus"]))
    np.testing.assert_allclose(ctx.embeddings, first, atol=TOL, rtol=0)
    second = padded.embed(padded.tokenize(texts, QUERY_PREFIX), ctx, 0, len(texts))
    np.testing.assert_allclose(got, second, atol=TOL, rtol=0)


def test_padded_reference_reproduces_the_golden_data(tiny_model, tiny_context, golden, tiny_path):
    """The plain path the engine and the benchmark are measured against is itself right."""
    padded = PaddedReference(tiny_model)
    docs, queries = golden["documents"], golden["queries"]
    got_docs = padded.embed(padded.tokenize(docs, DOCUMENT_PREFIX), tiny_context, 0, len(docs))
    got_queries = padded.embed(padded.tokenize(queries, QUERY_PREFIX), tiny_context, 0, 3)
    np.testing.assert_allclose(got_docs, golden["document_embeddings"], atol=TOL, rtol=0)
    np.testing.assert_allclose(got_queries, golden["query_embeddings"][:3], atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="float32"):
        PaddedReference(CDEModel.from_pretrained(tiny_path, dtype="bfloat16"))


def test_instruction_pooling_changes_the_embedding(make_checkpoint, golden):
    plain = CDEModel.from_pretrained(make_checkpoint("plain"), device="cpu")
    skip = CDEModel.from_pretrained(
        make_checkpoint("skip", config={"pool_ignore_instruction_tokens": True}), device="cpu"
    )
    ctx = plain.context(golden["minicorpus"])
    a = plain.embed_queries(golden["queries"][:2], context=ctx)
    b = skip.embed_queries(
        golden["queries"][:2], context=skip.context_from_embeddings(ctx.embeddings)
    )
    assert np.abs(a - b).max() > 1e-3


# -- contexts ----------------------------------------------------------------------------------


def test_sampling_rule_matches_numpy_choice_on_the_corpus():
    corpus = [f"doc {i}" for i in range(1000)]
    expected = np.random.default_rng(42).choice(corpus, size=32, replace=False).tolist()
    assert sample_minicorpus(corpus, 32, 42) == expected
    small = ["a", "b", "c"]
    expected_small = np.random.default_rng(7).choice(small, size=32, replace=True).tolist()
    assert sample_minicorpus(small, 32, 7) == expected_small


def test_fit_context_samples_and_records_provenance(tiny_model, golden):
    corpus = golden["documents"] + golden["minicorpus"]
    ctx = tiny_model.fit_context(corpus, seed=3)
    assert ctx.kind == "fitted" and ctx.seed == 3 and ctx.source_size == len(corpus)
    assert list(ctx.minicorpus) == sample_minicorpus(corpus, tiny_model.corpus_size, 3)
    assert ctx.embeddings.shape == (32, tiny_model.dim) and ctx.embeddings.dtype == np.float32
    same = tiny_model.context(list(ctx.minicorpus))
    assert same.fingerprint == ctx.fingerprint
    other = tiny_model.fit_context(corpus, seed=4)
    assert other.fingerprint != ctx.fingerprint
    assert ctx.describe()["sample"] == list(ctx.minicorpus[:5])


def test_small_corpus_is_sampled_with_replacement(tiny_model):
    ctx = tiny_model.fit_context(["only one", "and two"])
    assert len(ctx.minicorpus) == 32 and set(ctx.minicorpus) == {"only one", "and two"}


def test_fit_context_rejects_bad_corpora(tiny_model):
    with pytest.raises(ContextError, match="empty corpus"):
        tiny_model.fit_context([])
    with pytest.raises(InputError, match=r"corpus\[1\] is int"):
        tiny_model.fit_context(["ok", 3])
    with pytest.raises(InputError, match="None"):
        tiny_model.fit_context(None)
    with pytest.raises(ContextError, match="exactly 32"):
        tiny_model.context(["too few"])


def test_fallback_context(tiny_model, make_checkpoint, golden):
    ctx = tiny_model.fallback_context()
    assert ctx.kind == "fallback" and ctx.embeddings.shape == (32, tiny_model.dim)
    assert tiny_model.fallback_context().fingerprint == ctx.fingerprint  # deterministic
    folder = make_checkpoint()
    (folder / "random_strings.txt").write_text("\n".join(f"zq{i} xw{i}" for i in range(100)))
    with_file = CDEModel.from_pretrained(folder, device="cpu")
    ctx2 = with_file.fallback_context()
    assert all(text.startswith("zq") for text in ctx2.minicorpus)


def test_embedding_requires_an_explicit_context(tiny_model):
    with pytest.raises(NotFittedError, match="fit_context"):
        tiny_model.embed_documents(["text"], context=None)


def test_inputs(tiny_model, tiny_context):
    empty = tiny_model.embed_documents([], context=tiny_context)
    assert empty.shape == (0, tiny_model.dim)
    blank = tiny_model.embed_queries([""], context=tiny_context)
    assert np.isfinite(blank).all() and abs(np.linalg.norm(blank[0]) - 1) < 1e-5
    with pytest.raises(InputError, match="None"):
        tiny_model.embed_documents(None, context=tiny_context)
    with pytest.raises(InputError, match=r"texts\[1\] is NoneType"):
        tiny_model.embed_documents(["a", None], context=tiny_context)
    with pytest.raises(InputError, match=r"wrap it as \[text\]"):
        tiny_model.embed_queries("a query", context=tiny_context)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_model.embed_documents(["a"], context=tiny_context, batch_size=0)
