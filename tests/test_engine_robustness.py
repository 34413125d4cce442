"""The engine under hostile input and concurrent use (issue 8): clear errors, identical results."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cde_rag import CDEModel, CheckpointError, InputError
from cde_rag.errors import NumericalError

# Any Unicode text, control characters and lone surrogates' replacements included.
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(texts, min_size=1, max_size=6))
def test_any_text_embeds_to_a_unit_vector_independent_of_its_batch(tiny_model, tiny_context, batch):
    together = tiny_model.embed_documents(batch, context=tiny_context, batch_size=4)
    assert together.shape == (len(batch), tiny_model.dim)
    assert np.isfinite(together).all()
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = tiny_model.embed_documents(batch[:1], context=tiny_context)
    np.testing.assert_allclose(alone[0], together[0], atol=1e-5)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=texts)
def test_token_counts_stay_within_the_window(tiny_model, text):
    for input_type in ("document", "query"):
        count = tiny_model.count_tokens([text], input_type=input_type)[0]
        assert 2 <= count <= tiny_model.max_length


@pytest.mark.parametrize(
    "bad",
    [None, 42, b"bytes", [b"bytes"], [1.5], [["nested"]], [None], {"a": 1}.values()],
    ids=[
        "None",
        "int",
        "bytes",
        "bytes-item",
        "float-item",
        "list-item",
        "None-item",
        "dict-values",
    ],
)
def test_non_text_inputs_are_clear_errors(tiny_model, tiny_context, bad):
    with pytest.raises(InputError, match="str"):
        tiny_model.embed_documents(bad, context=tiny_context)


def test_eight_threads_get_the_single_threaded_results(tiny_model, tiny_context, golden):
    corpus = golden["documents"] + golden["minicorpus"]
    queries = golden["queries"]
    expected_docs = tiny_model.embed_documents(corpus, context=tiny_context)
    expected_queries = tiny_model.embed_queries(queries, context=tiny_context)

    def work(i: int) -> tuple[np.ndarray, np.ndarray]:
        # Each thread embeds a different rotation, so batches differ between threads.
        shift = i % len(corpus)
        docs = tiny_model.embed_documents(
            corpus[shift:] + corpus[:shift], context=tiny_context, batch_size=3
        )
        return np.roll(docs, shift, axis=0), tiny_model.embed_queries(queries, context=tiny_context)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(16)))
    for docs, qs in results:
        np.testing.assert_allclose(docs, expected_docs, atol=1e-5)
        np.testing.assert_allclose(qs, expected_queries, atol=1e-5)


def test_fitting_in_threads_while_embedding(tiny_model, tiny_context, golden):
    expected = tiny_model.embed_queries(golden["queries"], context=tiny_context)
    corpus = golden["documents"] * 3

    def fit(_: int) -> str:
        return tiny_model.fit_context(corpus, seed=11).fingerprint

    def embed(_: int) -> np.ndarray:
        return tiny_model.embed_queries(golden["queries"], context=tiny_context)

    with ThreadPoolExecutor(max_workers=8) as pool:
        fits = [pool.submit(fit, i) for i in range(4)]
        embeds = [pool.submit(embed, i) for i in range(8)]
        assert len({f.result() for f in fits}) == 1
        for e in embeds:
            np.testing.assert_allclose(e.result(), expected, atol=1e-5)


# -- never NaN (issue 12 item 8) -----------------------------------------------------------


def _scaled(key: str, factor: float):
    def edit(weights):
        weights[key] = weights[key] * factor
        return weights

    return edit


def test_weights_with_nan_are_refused_when_loaded(make_checkpoint):
    key = "second_stage_model.backbone.layers.1.mlp.Wi.weight"
    folder = make_checkpoint(edit_weights=_scaled(key, float("nan")))
    with pytest.raises(CheckpointError, match=rf"{key}.*NaN or infinite"):
        CDEModel.from_pretrained(folder, device="cpu")


def test_first_stage_weights_with_inf_are_refused_at_the_fit(make_checkpoint, golden):
    key = "first_stage_model.mlp.0.weight"
    model = CDEModel.from_pretrained(
        make_checkpoint(edit_weights=_scaled(key, float("inf"))), device="cpu"
    )
    with pytest.raises(CheckpointError, match=rf"{key}.*NaN or infinite"):
        model.fit_context(golden["documents"])


@pytest.mark.parametrize(
    "key",
    [
        "second_stage_model.backbone.layers.3.mlp.Wo.weight",  # NaN out of the backbone
        "second_stage_model.output_projection.2.weight",  # overflows the norm: zero vectors
    ],
    ids=["nan", "zero"],
)
def test_finite_weights_that_overflow_give_an_error_not_nan(
    make_checkpoint, golden, tiny_context, key
):
    """Finite but absurd weights (a damaged checkpoint) overflow float32 inside the model: the
    engine refuses to return those vectors (or cache them) and says why."""
    model = CDEModel.from_pretrained(make_checkpoint(edit_weights=_scaled(key, 1e38)), device="cpu")
    ctx = model.context_from_embeddings(tiny_context.embeddings)
    with pytest.raises(NumericalError, match=r"texts\[0\] \(2 of 2\).*float32.*damaged"):
        model.embed_documents(["ok", "hello"], context=ctx)


def test_first_stage_overflow_names_the_minicorpus_item(make_checkpoint, golden):
    key = "first_stage_model.embedder.layers.3.mlp.Wo.weight"
    model = CDEModel.from_pretrained(make_checkpoint(edit_weights=_scaled(key, 1e38)), device="cpu")
    with pytest.raises(NumericalError, match=r"minicorpus\[0\]"):
        model.context(golden["minicorpus"])


def test_a_tampered_cache_row_is_recomputed_not_returned(tiny_path, tiny_context, tmp_path):
    import sqlite3

    model = CDEModel.from_pretrained(tiny_path, device="cpu", embedding_cache=tmp_path / "c.db")
    texts = ["first text", "second text"]
    expected = model.embed_documents(texts, context=tiny_context)
    with sqlite3.connect(tmp_path / "c.db") as conn:
        nan = np.full(model.dim, np.nan, dtype="<f4").tobytes()
        assert conn.execute("UPDATE embeddings SET vector = ?", (nan,)).rowcount == 2
    again = model.embed_documents(texts, context=tiny_context)
    np.testing.assert_array_equal(again, expected)
    assert model.cache_stats["embedding_misses"] == 4  # both computed again
