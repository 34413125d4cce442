"""Scaling out on Ray Data: the distributed fit, the actor pool, the resumable folder job, and
loading its output into Chroma (a local folder and a real `chroma run` server) and LanceDB;
the `cde-rag index --engine ray`, `load` and `query --lancedb` commands. One local Ray (4
logical CPUs, small pools) for the session."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chroma_server import chroma_server_fixture

ray = pytest.importorskip("ray")
pytest.importorskip("lancedb")

from cde_rag import ray as cde_ray  # noqa: E402
from cde_rag.documents import chunk_documents, load_documents  # noqa: E402
from cde_rag.embeddings_folder import EmbeddingsFolder, EmbeddingsFolderError  # noqa: E402
from cde_rag.errors import ContextMismatchError  # noqa: E402
from cde_rag.ingest import versioned_chunks  # noqa: E402

CHUNKING = {"chunk_size": 200, "chunk_overlap": 20}
CHUNK_ARGS = ["--chunk-size", "200", "--chunk-overlap", "20"]
chroma = chroma_server_fixture(scope="module")
WORDS = ("river", "bank", "loan", "water", "fish", "money", "stream", "flood", "boat", "credit")


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray for the whole session. More logical CPUs than cores: an actor pool that
    takes every CPU would leave none for Ray Data's read and write tasks (a deadlock)."""
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network here
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
    """The chunks `cde-rag index` stores for the folder (with their source versions)."""
    return versioned_chunks(load_documents([folder]).documents, **CHUNKING)


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
        cde_ray.fit_context(ds.limit(0), tiny_model, text_column="body")


# -- embed_dataset -------------------------------------------------------------------------------


def test_a_pool_that_takes_every_cpu_is_refused(ray_address, tiny_model):
    """On this session's Ray (4 CPUs), 4 actors of 1 CPU would leave Ray Data no CPU for its
    read tasks and wait forever; 3 leave one."""
    context = tiny_model.fit_context(sentences(10))
    ds = ray.data.from_items([{"text": t} for t in sentences(4)])
    with pytest.raises(ValueError, match="never finish.*--actors"):
        cde_ray.embed_dataset(ds, tiny_model, context, actors=4)
    with pytest.raises(ValueError, match="leaving less than one"):
        cde_ray.embed_dataset(ds, tiny_model, context, actors=(2, 3), num_cpus=2)
    assert cde_ray.embed_dataset(ds, tiny_model, context, actors=(3, 4)) is not None


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
    assert out[40]["embedding"] is None
    assert out[40]["error"].startswith("'text' has a lone UTF-16 surrogate (U+D800)")
    assert out[41]["embedding"] is None
    assert out[41]["error"].startswith("'text' is NoneType, not str")


def test_embed_dataset_refuses_bad_options_before_any_job(ray_address, tiny_model, tiny_context):
    ds = ray.data.from_items([{"body": "a"}])
    for options, message in [
        ({"actors": 0}, "actors must be a positive pool size"),
        ({"actors": (3, 1)}, r"actors must be .*\(min, max\)"),
        ({"dtype": "int8"}, "Unknown dtype 'int8'"),
        ({}, "no column 'text'"),
    ]:
        with pytest.raises(ValueError, match=message):
            cde_ray.embed_dataset(ds, tiny_model, tiny_context, **options)


def test_embed_dataset_bfloat16_actors_stay_close_to_float32(ray_address, tiny_model, tiny_context):
    texts = sentences(12)
    ds = ray.data.from_items([{"text": t, "key": i} for i, t in enumerate(texts)])
    out = sorted(
        cde_ray.embed_dataset(ds, tiny_model, tiny_context, dtype="bfloat16").take_all(),
        key=lambda row: row["key"],
    )
    fast = np.stack([np.asarray(row["embedding"]) for row in out])
    exact = tiny_model.embed_documents(texts, context=tiny_context)
    assert fast.shape == exact.shape and not np.allclose(fast, exact, atol=1e-6)  # really bf16
    assert (np.sum(fast * exact, axis=1) / np.linalg.norm(fast, axis=1)).min() > 0.99


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


# -- the folder job: killed, resumed, run again ----------------------------------------------------

JOB = (
    """
import sys, ray
ray.init(address=sys.argv[1], logging_level="WARNING",
         runtime_env={"env_vars": {"%s": "1"}})  # one second per batch: time to kill it
from cde_rag.ray import index_folder
index_folder(sys.argv[2], sys.argv[3], sys.argv[4], chunk_size=200, chunk_overlap=20,
             rows_per_shard=6, batch_size=6, show_progress=False)
"""
    % cde_ray.EMBED_DELAY_ENV
)
JOB_OPTIONS = {**CHUNKING, "rows_per_shard": 6, "batch_size": 6, "show_progress": False}


def committed_ids(out: Path) -> list[str]:
    """Ids in Ray Data's committed checkpoint files (pending ones are redone on resume)."""
    files = [
        f
        for f in (out / "_checkpoint").glob("*.parquet")
        if not f.name.endswith(".pending.parquet")
    ]
    return [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


@pytest.fixture(scope="module")
def job(ray_address, tmp_path_factory, tiny_path):
    """A job killed (-9) after its first committed shard, resumed, then run once more."""
    root = tmp_path_factory.mktemp("ray-job")
    docs, out = write_corpus(root / "docs", files=8), root / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", JOB, ray_address, str(docs), str(out), tiny_path],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not committed_ids(out):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the job wrote nothing in 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    time.sleep(3)  # Ray stops the dead driver's workers
    killed_with = len(committed_ids(out))
    resumed = cde_ray.index_folder(docs, out, tiny_path, **JOB_OPTIONS)
    again = cde_ray.index_folder(docs, out, **JOB_OPTIONS)
    return {
        "docs": docs,
        "out": out,
        "killed_with": killed_with,
        "resumed": resumed,
        "again": again,
    }


def with_another_context(out: Path, copy: Path, model):
    """A copy of the output whose context (and manifest) say another corpus made it:
    `(folder, that context, the original manifest)`."""
    import shutil

    shutil.copytree(out, copy)
    foreign = model.fit_context(["another", "corpus"])
    EmbeddingsFolder(copy).save_context(foreign)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "context": foreign.fingerprint}))
    return copy, foreign, manifest


def output_rows(out: Path) -> pa.Table:
    return pq.read_table(out / "data")


@pytest.mark.slow
def test_resumed_job_embeds_only_the_missing_rows(job):
    resumed, again = job["resumed"], job["again"]
    assert 0 < job["killed_with"] <= resumed.already < resumed.chunks
    assert resumed.embedded == resumed.chunks - resumed.already
    assert resumed.new_context is False  # fitted by the killed run, kept
    assert (again.embedded, again.already, again.rows) == (0, again.chunks, again.chunks)
    assert again.context == resumed.context


@pytest.mark.slow
def test_job_writes_the_ids_vectors_and_context_of_a_local_index(job, tiny_model):
    chunks = local_chunks(job["docs"])
    rows = output_rows(job["out"])
    ids = rows.column("id").to_pylist()
    assert sorted(ids) == sorted(c.id for c in chunks)  # each chunk exactly once
    context = tiny_model.fit_context([c.text for c in chunks])  # as cde-rag index fits it
    assert job["again"].context == context.fingerprint
    by_id = {c.id: c for c in chunks}
    expected = tiny_model.embed_documents([by_id[i].text for i in ids], context=context)
    got = np.stack(rows.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert rows.column("error").null_count == len(ids)
    first = rows.slice(0, 1).to_pylist()[0]
    chunk = by_id[first["id"]]
    assert (first["source"], first["chunk"], first["text"]) == (
        chunk.source,
        chunk.index,
        chunk.text,
    )
    assert json.loads(first["metadata"]) == chunk.metadata
    manifest = EmbeddingsFolder(job["out"]).complete_manifest()
    assert (manifest["rows"], manifest["failed"], manifest["dim"]) == (
        len(chunks),
        0,
        tiny_model.dim,
    )
    assert manifest["context"] == context.fingerprint


@pytest.mark.slow
def test_job_refuses_another_chunking_of_the_same_folder(job):
    before = (job["out"] / "manifest.json").read_bytes()
    with pytest.raises(
        EmbeddingsFolderError, match="chunk size 200 and overlap 20; this run uses 300"
    ):
        cde_ray.index_folder(job["docs"], job["out"], chunk_size=300, chunk_overlap=20)
    assert (job["out"] / "manifest.json").read_bytes() == before


# -- LanceDB -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lancedb_load_twice_then_search_finds_its_own_chunk(job, tmp_path, tiny_model, capsys):
    from cde_rag import lancedb_store
    from cde_rag.cli import main

    uri, n = str(tmp_path / "lance"), job["again"].rows
    first = lancedb_store.load_embeddings(job["out"], uri, "docs", show_progress=False)
    assert (first.added, first.rows, first.new_table, first.failed) == (n, n, True, 0)
    capsys.readouterr()
    assert main(["load", str(job["out"]), "--lancedb", uri, "-c", "docs", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["added"], second["rows"], second["new_table"]) == (0, n, False)

    chunks = local_chunks(job["docs"])
    store = lancedb_store.open_store(uri, "docs")
    assert store.context.fingerprint == job["again"].context
    for chunk in chunks[::7]:
        hits = lancedb_store.search(uri, "docs", chunk.text, k=3)
        assert hits[0].id == chunk.id
        assert (hits[0].source, hits[0].chunk, hits[0].text) == (
            chunk.source,
            chunk.index,
            chunk.text,
        )
        assert hits[0].metadata == chunk.metadata and [h.rank for h in hits] == [1, 2, 3]
    question = "mortgage interest at the river bank"
    hits = lancedb_store.search(uri, "docs", question, k=5)
    vectors = tiny_model.embed_documents([c.text for c in chunks], context=store.context)
    scores = vectors @ tiny_model.embed_queries([question], context=store.context)[0]
    best = np.argsort(-scores, kind="stable")[:5]
    assert [h.id for h in hits] == [chunks[i].id for i in best]
    np.testing.assert_allclose([h.score for h in hits], scores[best], atol=1e-4)
    source = chunks[0].source
    only = lancedb_store.search(uri, "docs", question, k=50, source=source)
    assert only and {h.source for h in only} == {source}


@pytest.mark.slow
def test_lancedb_refuses_mixed_contexts_and_unfinished_folders(
    job, tmp_path, tiny_model, make_checkpoint
):

    import lancedb

    from cde_rag import CDEModel, lancedb_store

    uri, n = str(tmp_path / "lance"), job["again"].rows
    lancedb_store.load_embeddings(job["out"], uri, "docs", show_progress=False)
    # Another corpus's output (another context) into the same table: refused, nothing added.
    other, foreign, manifest = with_another_context(job["out"], tmp_path / "other", tiny_model)
    with pytest.raises(ContextMismatchError, match="mixing them"):
        lancedb_store.load_embeddings(other, uri, "docs", show_progress=False)
    assert lancedb_store.open_store(uri, "docs").table.count_rows() == n
    # An unfinished job's folder is refused.
    (other / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(EmbeddingsFolderError, match="has not finished"):
        lancedb_store.load_embeddings(other, uri, "fresh", show_progress=False)
    # A query with a model that did not make the context is refused.
    variant = CDEModel.from_pretrained(
        make_checkpoint("variant", edit_weights=lambda w: {k: v * 1.01 for k, v in w.items()}),
        device="cpu",
    )
    with pytest.raises(ContextMismatchError, match="made by model"):
        lancedb_store.search(uri, "docs", "river", model=variant)
    # A context swapped in beside the table is caught at query time.
    db = lancedb.connect(uri)
    row = db.open_table("docs-cde-context").to_arrow().to_pylist()[0]
    db.drop_table("docs-cde-context")
    row.update(context=foreign.to_bytes(), fingerprint=foreign.fingerprint)
    db.create_table("docs-cde-context", data=[row])
    with pytest.raises(ContextMismatchError, match="records context"):
        lancedb_store.search(uri, "docs", "river")


def test_load_command_usage_and_one_line_errors(tmp_path, capsys):
    from cde_rag.cli import build_parser, main

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["load", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "--lancedb URI" in usage and "--collection NAME" in usage
    with pytest.raises(SystemExit) as exit_info:
        main(["load", str(tmp_path), "--collection", "docs"])  # no target
    assert exit_info.value.code == 2
    assert "one of the arguments --db --chroma-url --lancedb is required" in capsys.readouterr().err
    lance = str(tmp_path / "lance")
    assert main(["load", str(tmp_path), "--lancedb", lance, "-c", "docs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cde-rag load: error: ") and "has no manifest.json" in err
    assert main(["load", str(tmp_path), "--lancedb", lance, "-c", "bad name"]) == 1
    assert "Invalid LanceDB table name 'bad name'" in capsys.readouterr().err
    assert not (tmp_path / "lance").exists()  # nothing was created for a refused load


# -- Chroma --------------------------------------------------------------------------------------


def chroma_client(db: Path):
    import chromadb

    return chromadb.PersistentClient(
        path=str(db), settings=chromadb.Settings(anonymized_telemetry=False)
    )


def stored(collection) -> dict[str, tuple[str, dict, np.ndarray]]:
    found = collection.get(include=["documents", "metadatas", "embeddings"])
    return {
        i: (text, meta, np.asarray(vector))
        for i, text, meta, vector in zip(
            found["ids"], found["documents"], found["metadatas"], found["embeddings"], strict=True
        )
    }


def load_json(capsys, *argv: str) -> dict:
    from cde_rag.cli import main

    capsys.readouterr()
    code = main(["load", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.slow
def test_chroma_load_stores_what_a_local_index_stores_once(job, tmp_path, tiny_path, capsys):
    from cde_rag import chroma
    from cde_rag.cli import main

    db, n = tmp_path / "chroma", job["again"].rows
    argv = ["index", str(job["docs"]), "-c", "local", "--db", str(db), "--model", tiny_path]
    assert main([*argv, *CHUNK_ARGS, "--progress", "none", "--no-cache"]) == 0
    first = load_json(capsys, str(job["out"]), "--db", str(db), "-c", "loaded")
    assert (first["added"], first["rows"], first["new_collection"]) == (n, n, True)
    assert (first["failed"], first["store"]) == (0, str(db))
    second = load_json(capsys, str(job["out"]), "--db", str(db), "-c", "loaded")
    assert (second["added"], second["rows"], second["new_collection"]) == (0, n, False)

    client = chroma_client(db)
    local = chroma.open_collection(client, "local")
    loaded = chroma.open_collection(client, "loaded")
    assert loaded.count() == n
    assert chroma.get_context(loaded).fingerprint == chroma.get_context(local).fingerprint
    assert chroma.get_context(loaded).fingerprint == first["context"] == job["again"].context
    assert loaded.metadata == local.metadata  # the chunking, so `index` accepts it later
    expected, got = stored(local), stored(loaded)
    assert sorted(got) == sorted(expected)
    for chunk_id, (text, meta, vector) in expected.items():
        assert got[chunk_id][:2] == (text, meta)
        np.testing.assert_allclose(got[chunk_id][2], vector, atol=1e-5)

    # `cde-rag index` of the same files into the loaded collection finds everything stored.
    capsys.readouterr()
    argv = ["index", str(job["docs"]), "-c", "loaded", "--db", str(db), *CHUNK_ARGS]
    assert main([*argv, "--progress", "none", "--no-cache"]) == 0
    assert f"0 added, {n} already stored" in capsys.readouterr().out
    # `cde-rag query` through the loaded collection finds each chunk first.
    for chunk in local_chunks(job["docs"])[::5]:
        assert (
            main(["query", chunk.text, "-c", "loaded", "--db", str(db), "-k", "2", "--json"]) == 0
        )
        hits = json.loads(capsys.readouterr().out)
        assert hits[0]["id"] == chunk.id and hits[0]["source"] == chunk.source


@pytest.mark.slow
def test_chroma_load_refuses_another_context_and_bad_folders(job, tmp_path, tiny_model, capsys):
    from cde_rag.cli import main

    db, n = tmp_path / "chroma", job["again"].rows
    load_json(capsys, str(job["out"]), "--db", str(db), "-c", "loaded")
    other, _, manifest = with_another_context(job["out"], tmp_path / "other", tiny_model)
    assert main(["load", str(other), "--db", str(db), "-c", "loaded"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cde-rag load: error: Chroma collection 'loaded' holds vectors")
    assert "mixing them would make search results meaningless" in err
    assert "cde-rag context save --collection loaded -o NEW_OUT/context.safetensors" in err
    assert chroma_client(db).get_collection("loaded").count() == n  # nothing added
    # An unfinished job's folder, or no output folder at all: refused, no --db folder made.
    (other / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    for path, message in [(other, "has not finished"), (tmp_path, "has no manifest.json")]:
        assert main(["load", str(path), "--db", str(tmp_path / "new"), "-c", "fresh"]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_chroma_load_streams_bounded_batches_with_one_progress(job, tmp_path, monkeypatch):
    from chromadb.api.models.Collection import Collection

    from cde_rag.chroma_load import load_embeddings

    sizes: list[int] = []
    add = Collection.add

    def counting_add(self, *args, **kwargs):
        if self.name == "batched":  # not its context's companion collection
            sizes.append(len(kwargs["ids"]))
        return add(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "add", counting_add)
    seen: list[tuple[int, int]] = []
    n = job["again"].rows
    client = chroma_client(tmp_path / "chroma")
    report = load_embeddings(
        job["out"], client, "batched", batch_size=7, progress=lambda *p: seen.append(p)
    )
    assert (report.added, report.rows) == (n, n)
    assert sum(sizes) == n and max(sizes) <= 7 and len(sizes) >= -(-n // 7)
    assert seen[-1] == (n, n) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        load_embeddings(job["out"], client, "batched", batch_size=0)


@pytest.mark.slow
@pytest.mark.server
def test_chroma_load_into_a_server_then_query(job, chroma, capsys):
    from cde_rag.cli import main

    n = job["again"].rows
    report = load_json(capsys, str(job["out"]), "--chroma-url", chroma.url, "-c", "remote")
    assert (report["added"], report["rows"], report["store"]) == (n, n, chroma.url)
    chunk = local_chunks(job["docs"])[3]
    assert main(["query", chunk.text, "-c", "remote", "--chroma-url", chroma.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == chunk.id
    again = load_json(capsys, str(job["out"]), "--chroma-url", chroma.url, "-c", "remote")
    assert (again["added"], again["rows"]) == (0, n)


# -- the command line: index --engine ray, load, query --lancedb ---------------------------------


@pytest.mark.slow
def test_cli_ray_engine_loads_files_as_the_local_engine(ray_address, tmp_path, tiny_path, capsys):
    """Both engines read the same files (--max-chars skips the same one). The Ray job starts
    from the context of a local collection (the remedy a mismatched load suggests), so its
    output loads into that collection adding nothing; it also loads into LanceDB."""
    from cde_rag.cli import main

    docs = write_corpus(tmp_path / "docs", files=4, seed=3)
    (docs / "long.md").write_text("word " * 400)  # over --max-chars: skipped by both engines
    out, db, lance = tmp_path / "out", str(tmp_path / "db"), str(tmp_path / "lance")
    files = [str(docs), *CHUNK_ARGS, "--max-chars", "1500", "--json"]
    capsys.readouterr()
    local = ["index", *files, "-c", "local", "--db", db, "--model", tiny_path, "--seed", "5"]
    assert main([*local, "--no-cache"]) == 0
    local_report = json.loads(capsys.readouterr().out)
    saved = ["context", "save", "-c", "local", "--db", db, "-o", str(out / "context.safetensors")]
    assert main(saved) == 0
    argv = ["index", *files, "--engine", "ray", "--out", str(out), "--model", tiny_path]
    argv += ["--actors", "1", "--num-cpus", "1"]
    capsys.readouterr()
    assert main(argv) == 0
    printed, err = capsys.readouterr()
    report = json.loads(printed)
    loaded = load_documents([docs], max_chars=1500)
    chunks = chunk_documents(loaded.documents, **CHUNKING)
    assert (report["chunks"], report["embedded"], report["rows"]) == (len(chunks),) * 3
    assert report["errors"] == local_report["errors"] == [list(e) for e in loaded.skipped]
    assert any("long.md" in path for path, _ in loaded.skipped)
    assert (report["context"], report["new_context"]) == (local_report["context"], False)
    assert report["out"] == str(out) and f"embed {len(chunks)}/{len(chunks)}" in err
    assert sorted(output_rows(out).column("id").to_pylist()) == sorted(c.id for c in chunks)
    assert main(argv) == 0  # run again: nothing new to embed
    again = json.loads(capsys.readouterr()[0])
    assert (again["embedded"], again["already"]) == (0, len(chunks))

    into_local = load_json(capsys, str(out), "--db", db, "-c", "local")
    assert (into_local["added"], into_local["rows"]) == (0, len(chunks))
    load_json(capsys, str(out), "--lancedb", lance, "-c", "corpus")
    chunk = chunks[2]
    assert main(["query", chunk.text, "--lancedb", lance, "-c", "corpus", "-k", "3"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("[1] ") and f"  {chunk.source} (chunk {chunk.index})\n" in shown
    assert main(["query", chunk.text, "--lancedb", lance, "-c", "corpus", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["id"] == chunk.id and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
