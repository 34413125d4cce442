"""Scaling out on Ray Data: the distributed fit, the actor pool, the resumable folder job, and
loading its output into LanceDB. One local Ray (4 logical CPUs, small pools) for the session."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("lancedb")

from cde_rag import ray as cde_ray  # noqa: E402
from cde_rag.documents import chunk_documents, load_documents  # noqa: E402
from cde_rag.errors import ContextMismatchError  # noqa: E402

CHUNKING = {"chunk_size": 200, "chunk_overlap": 20}
WORDS = ["river", "bank", "loan", "interest", "water", "fish", "money", "stream", "deposit", "current", "credit", "flood", "boat"]


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray for the whole session. More logical CPUs than cores: an actor pool that
    takes every CPU would leave none for Ray Data's read and write tasks (a deadlock)."""
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            logging_level=logging.WARNING,
            object_store_memory=256 * 1024**2,
        )
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


def write_corpus(folder: Path, files: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(50)) + "." for _ in range(3)]
        (folder / f"doc{i:02d}.{'md' if i % 2 else 'txt'}").write_text("\n\n".join(paragraphs))
    (folder / "binary.txt").write_bytes(b"\x00\x01" * 50)  # skipped, as by cde-rag index
    return folder


def local_chunks(folder: Path):
    return chunk_documents(load_documents([folder]).documents, **CHUNKING)


def parquet_dataset(tmp_path: Path, texts: list[str], per_file: int):
    """Texts in several Parquet files (several row groups each), read back by Ray."""
    folder = tmp_path / f"parquet-{len(texts)}"
    folder.mkdir()
    for number, start in enumerate(range(0, len(texts), per_file)):
        part = texts[start : start + per_file]
        table = pa.table({"text": part, "row": list(range(start, start + len(part)))})
        pq.write_table(table, folder / f"part-{number:03d}.parquet", row_group_size=3)
    return ray.data.read_parquet(str(folder))


def sentences(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(8)) for i in range(n)]


# -- fit_context ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["fewer", "equal", "more"])
def test_distributed_fit_equals_local_fit(ray_address, tmp_path, tiny_model, size):
    n = {"fewer": 11, "equal": tiny_model.corpus_size, "more": 4 * tiny_model.corpus_size}[size]
    texts = sentences(n)
    if size == "fewer":  # several blocks, not files
        ds = ray.data.from_items([{"text": t} for t in texts], override_num_blocks=3)
    else:
        ds = parquet_dataset(tmp_path, texts, per_file=7)
    fitted = cde_ray.fit_context(ds, tiny_model, seed=7)
    local = tiny_model.fit_context(texts, seed=7)
    assert fitted.minicorpus == local.minicorpus
    np.testing.assert_allclose(fitted.embeddings, local.embeddings, atol=1e-6)
    assert (fitted.kind, fitted.seed, fitted.source_size) == ("fitted", 7, n)
    assert fitted.fingerprint == local.fingerprint


def test_fit_refuses_a_missing_column_and_an_empty_dataset(ray_address, tiny_model):
    ds = ray.data.from_items([{"body": "a"}])
    with pytest.raises(ValueError, match="no column 'text'.*'body'.*text_column="):
        cde_ray.fit_context(ds, tiny_model)
    with pytest.raises(ValueError, match="empty corpus"):
        cde_ray.fit_context(ds.filter(lambda row: False), tiny_model, text_column="body")


# -- embed_dataset -------------------------------------------------------------------------------


def test_embed_dataset_equals_engine_and_reports_bad_rows(ray_address, tmp_path, tiny_model):
    texts = sentences(40)
    context = tiny_model.fit_context(texts)
    bad = {40: "lone \ud800 surrogate", 41: None}
    rows = [{"text": t, "key": i} for i, t in enumerate(texts)]
    rows += [{"text": text, "key": i} for i, text in bad.items()]
    ds = ray.data.from_items(rows, override_num_blocks=4)
    out = cde_ray.embed_dataset(ds, tiny_model, context, actors=(1, 2), batch_size=8).take_all()

    out.sort(key=lambda row: row["key"])
    assert [row["key"] for row in out] == list(range(42))
    expected = tiny_model.embed_documents(texts, context=context)
    got = np.stack([np.asarray(row["embedding"], dtype=np.float32) for row in out[:40]])
    assert got.shape == (40, tiny_model.dim)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert all(row["error"] is None for row in out[:40])
    assert out[40]["embedding"] is None and "lone UTF-16 surrogate" in out[40]["error"]
    assert out[41]["embedding"] is None and "NoneType, not str" in out[41]["error"]


def test_embed_dataset_refuses_a_context_of_another_model(
    ray_address, tmp_path, tiny_model, tiny_path, make_checkpoint
):
    from cde_rag import CDEModel

    other = CDEModel.from_pretrained(
        make_checkpoint("other", edit_weights=lambda w: {k: v * 1.01 for k, v in w.items()}),
        device="cpu",
    )
    foreign = other.fit_context(sentences(5))
    ds = ray.data.from_items([{"text": "a"}])
    with pytest.raises(ContextMismatchError, match="made by model"):
        cde_ray.embed_dataset(ds, tiny_model, foreign)
    # By path, the actors check it: the job fails with the same error, nothing is embedded.
    path = foreign.save(tmp_path / "foreign.safetensors")
    with pytest.raises(Exception, match="ContextMismatchError"):
        cde_ray.embed_dataset(ds, tiny_path, path).take_all()
