"""Corpus contexts: fingerprints, model binding, atomic save and corruption-safe load."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cde_rag import CDEModel, CorpusContext
from cde_rag.errors import ContextError, ContextMismatchError


def test_save_and_load_roundtrip(tiny_model, golden, tmp_path):
    ctx = tiny_model.fit_context(golden["documents"] * 3, seed=5)
    path = ctx.save(tmp_path / "ctx.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx.safetensors"]  # no temp files left
    loaded = CorpusContext.load(path)
    assert loaded == ctx and loaded.fingerprint == ctx.fingerprint
    np.testing.assert_array_equal(loaded.embeddings, ctx.embeddings)
    assert loaded.minicorpus == ctx.minicorpus
    assert (loaded.kind, loaded.seed, loaded.source_size) == ("fitted", 5, 33)
    assert loaded.model_fingerprint == tiny_model.fingerprint
    docs = golden["documents"][:3]
    np.testing.assert_array_equal(
        tiny_model.embed_documents(docs, context=loaded),
        tiny_model.embed_documents(docs, context=ctx),
    )


def test_saved_file_is_safetensors_with_json_metadata(tiny_context, tmp_path):
    from safetensors import safe_open

    path = tiny_context.save(tmp_path / "ctx.safetensors")
    with safe_open(str(path), framework="numpy") as fh:
        assert list(fh.keys()) == ["embeddings"]
        assert fh.metadata()["format"] == "cde-rag-context"


def test_fingerprint_is_stable_across_processes(tiny_path, tiny_context, golden, tmp_path):
    corpus = tmp_path / "mini.txt"
    corpus.write_text("\n".join(golden["minicorpus"]))
    code = (
        "import sys; from cde_rag import CDEModel; "
        "m = CDEModel.from_pretrained(sys.argv[1], device='cpu'); "
        "c = m.context(open(sys.argv[2]).read().split('\\n')); print(c.fingerprint, c.checksum)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, tiny_path, str(corpus)],
        capture_output=True,
        text=True,
        check=True,
    )
    # Same recipe and same batching on the same machine: same identity and same numbers.
    assert out.stdout.split() == [tiny_context.fingerprint, tiny_context.checksum]


# -- what "the same context" means (issue 15 part 3) -------------------------------------------


def test_fingerprint_is_the_recipe_whatever_the_batch_size(tiny_model, golden):
    contexts = {
        size: tiny_model.context(golden["minicorpus"], batch_size=size) for size in (1, 3, 32)
    }
    assert len({ctx.fingerprint for ctx in contexts.values()}) == 1
    for ctx in contexts.values():  # the checksum follows the numbers, bit for bit
        same_bits = np.array_equal(ctx.embeddings, contexts[32].embeddings)
        assert (ctx.checksum == contexts[32].checksum) == same_bits == (ctx == contexts[32])
        np.testing.assert_allclose(ctx.embeddings, contexts[32].embeddings, atol=1e-5)
    fitted = tiny_model.fit_context(golden["documents"] * 3, seed=5, batch_size=3)
    explicit = tiny_model.context(list(fitted.minicorpus))
    assert fitted.fingerprint == explicit.fingerprint  # the texts decide, not how they were picked
    reordered = tiny_model.context(list(fitted.minicorpus)[::-1])
    assert reordered.fingerprint != fitted.fingerprint  # order sets the positions: another context


def test_float32_and_bfloat16_fits_share_the_fingerprint_not_the_checksum(
    tiny_path, tiny_model, golden, tmp_path
):
    exact = tiny_model.context(golden["minicorpus"])
    fast_model = CDEModel.from_pretrained(tiny_path, device="cpu", dtype="bfloat16")
    fast = fast_model.context(golden["minicorpus"])
    assert fast_model.fingerprint == tiny_model.fingerprint
    assert fast.fingerprint == exact.fingerprint and fast.fit_dtype == "bfloat16"
    assert fast.checksum != exact.checksum and fast != exact
    assert not np.array_equal(fast.embeddings, exact.embeddings)
    # Records kept with stored vectors name both: the numbers decide whether they match.
    assert exact.matches(exact.fingerprint, exact.checksum)
    assert exact.matches(exact.fingerprint)  # a record without a checksum
    assert not fast.matches(exact.fingerprint, exact.checksum)
    assert not exact.matches(tiny_model.context_from_embeddings(exact.embeddings).fingerprint)
    # The embedding cache is keyed by the numbers: vectors of one fit never serve the other.
    model = CDEModel.from_pretrained(tiny_path, device="cpu", embedding_cache=tmp_path / "c.db")
    texts = golden["documents"][:3]
    first = model.embed_documents(texts, context=exact)
    second = model.embed_documents(texts, context=fast)
    assert model.cache_stats["embedding_hits"] == 0
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(model.embed_documents(texts, context=exact), first)
    assert model.cache_stats["embedding_hits"] == 3


def test_torn_and_tampered_files_are_clear_errors(tiny_context, tmp_path):
    path = tiny_context.save(tmp_path / "ctx.safetensors")
    data = path.read_bytes()
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(data[: len(data) // 2])
    with pytest.raises(ContextError, match="torn or corrupted"):
        CorpusContext.load(torn)
    tampered = tmp_path / "tampered.safetensors"
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    tampered.write_bytes(bytes(flipped))
    with pytest.raises(ContextError, match="corrupted"):
        CorpusContext.load(tampered)
    with pytest.raises(ContextError, match="No context file"):
        CorpusContext.load(tmp_path / "missing.safetensors")
    assert path.read_bytes() == data  # a failed load touches nothing


def test_failed_save_keeps_the_previous_file(tiny_context, tiny_model, tmp_path, monkeypatch):
    path = tiny_context.save(tmp_path / "ctx.safetensors")
    before = path.read_bytes()
    other = tiny_model.fallback_context()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx.safetensors"]


def test_context_from_another_model_is_refused(tiny_context, make_checkpoint):
    def perturb(weights):
        key = "second_stage_model.output_projection.0.bias"
        weights[key] = weights[key] + 0.5
        return weights

    other = CDEModel.from_pretrained(make_checkpoint(edit_weights=perturb), device="cpu")
    assert (
        other.fingerprint
        != CDEModel.from_pretrained(make_checkpoint("same"), device="cpu").fingerprint
    )
    with pytest.raises(ContextMismatchError, match="made by model"):
        other.embed_queries(["q"], context=tiny_context)


def test_context_from_embeddings(tiny_model, tiny_context):
    ctx = tiny_model.context_from_embeddings(tiny_context.embeddings)
    assert ctx.kind == "embeddings" and ctx.minicorpus is None
    # Same numbers: equal, and the same checksum; but given numbers are their own recipe.
    assert ctx == tiny_context and ctx.checksum == tiny_context.checksum
    assert ctx.fingerprint != tiny_context.fingerprint
    assert ctx.fingerprint == tiny_model.context_from_embeddings(ctx.embeddings).fingerprint
    moved = np.array(ctx.embeddings)
    moved[0, 0] += 1e-3
    assert tiny_model.context_from_embeddings(moved).fingerprint != ctx.fingerprint
    with pytest.raises(ContextError, match="shape"):
        tiny_model.context_from_embeddings(np.zeros((3, tiny_model.dim)))


def test_context_is_immutable(tiny_context):
    with pytest.raises(ValueError):
        tiny_context.embeddings[0, 0] = 1.0


def test_huge_finite_rows_are_refused_before_they_make_nan(tiny_model):
    """3e38 is finite, but the second stage squares it: the context must refuse it up front."""
    rows = np.ones((tiny_model.corpus_size, tiny_model.dim), dtype=np.float32)
    fine = tiny_model.context_from_embeddings(rows)
    assert np.isfinite(tiny_model.embed_documents(["a document"], context=fine)).all()
    rows[3, 0] = 3e38
    with pytest.raises(ContextError, match="row 3 has norm 3e.38"):
        tiny_model.context_from_embeddings(rows)


def _rewrite_rows(path, rows):
    """The saved file with its matrix replaced by `rows`, metadata untouched (a hand edit)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    save_file({"embeddings": rows.astype(np.float32)}, str(path), metadata=meta)


@pytest.mark.parametrize(
    ("value", "message"),
    [(3e38, r"row 3 has norm 3e\+38"), (np.inf, "NaN or infinite"), (np.nan, "NaN or infinite")],
    ids=["huge", "inf", "nan"],
)
def test_loading_a_file_with_bad_rows_is_a_context_error(tiny_context, tmp_path, value, message):
    path = tiny_context.save(tmp_path / "ctx.safetensors")
    rows = np.array(tiny_context.embeddings)
    rows[3, 0] = value
    _rewrite_rows(path, rows)
    before = path.read_bytes()
    with pytest.raises(ContextError, match=message) as caught:
        CorpusContext.load(path)
    assert str(path) in str(caught.value)  # says which file
    assert "malformed context metadata" not in str(caught.value)  # the rows are the problem
    assert path.read_bytes() == before


def test_llama_index_fit_and_engine_fit_share_the_fingerprint(tiny_model, golden):
    """The case from issue 15: a LlamaIndex fit with embed_batch_size=4 and the engine's fit
    with its default batch size are the same context (their numbers differ in the last bits)."""
    from cde_rag.llama_index import CDEEmbedding

    corpus = golden["documents"] * 3
    emb = CDEEmbedding(model=tiny_model, embed_batch_size=4, corpus=corpus)
    engine = tiny_model.fit_context(corpus)
    assert emb.context_fingerprint == engine.fingerprint
    np.testing.assert_allclose(emb.context.embeddings, engine.embeddings, atol=1e-5)


def test_new_public_names_are_at_top_level_without_loading_the_engine():
    code = (
        "import sys, cde_rag; "
        "from cde_rag import LegacyContextWarning, NumericalError, UnsupportedTransformersError; "
        "from cde_rag.context import LegacyContextWarning as L; from cde_rag import errors; "
        "assert L is LegacyContextWarning and NumericalError is errors.NumericalError; "
        "assert UnsupportedTransformersError is errors.UnsupportedTransformersError; "
        "assert issubclass(UnsupportedTransformersError, cde_rag.CheckpointError); "
        "assert {'LegacyContextWarning', 'NumericalError', 'UnsupportedTransformersError'} "
        "<= set(cde_rag.__all__); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    import cde_rag

    assert all(hasattr(cde_rag, name) for name in cde_rag.__all__)
