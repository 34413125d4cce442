"""Ingestion into Chroma: reports, idempotent reruns, kept contexts, queries, and kill -9."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import chromadb
import numpy as np
import pytest

from cde_rag import chroma
from cde_rag.documents import DocumentError, chunk_documents, load_documents
from cde_rag.errors import ContextMismatchError
from cde_rag.ingest import IndexReport, index_paths, query_collection

os.environ["ANONYMIZED_TELEMETRY"] = "False"
SETTINGS = chromadb.Settings(anonymized_telemetry=False)
WORDS = [
    "river",
    "bank",
    "loan",
    "interest",
    "water",
    "fish",
    "money",
    "stream",
    "deposit",
    "current",
    "credit",
    "flood",
    "boat",
    "account",
    "branch",
    "mortgage",
    "shore",
    "rate",
]
CHUNKING = {"chunk_size": 200, "chunk_overlap": 20}


def write_corpus(folder: Path, files: int = 12, seed: int = 0) -> Path:
    """Files of random prose (a few paragraphs each), plus junk that must be skipped."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(60)) + "." for _ in range(3)]
        suffix = ".md" if i % 3 == 0 else ".txt"
        (folder / f"doc{i:02d}{suffix}").write_text("\n\n".join(paragraphs))
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (folder / "empty.md").write_text("")
    return folder


def expected_chunks(folder: Path):
    return chunk_documents(load_documents([folder]).documents, **CHUNKING)


def stored(client, name: str) -> dict[str, tuple[str, dict]]:
    got = client.get_collection(name, embedding_function=None).get(
        include=["documents", "metadatas"]
    )
    return {
        i: (d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
    }


@pytest.fixture
def client(tmp_path):
    return chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS)


def test_index_report_rerun_and_stored_records(tmp_path, client, tiny_model):
    docs = write_corpus(tmp_path / "docs", files=6)
    chunks = expected_chunks(docs)
    events: list[tuple[str, int, int]] = []
    report = index_paths(
        [docs],
        client=client,
        collection="docs",
        model=tiny_model,
        batch_size=8,
        progress=lambda *e: events.append(e),
        **CHUNKING,
    )
    assert isinstance(report, IndexReport)
    assert (report.files, report.chunks, report.added, report.skipped) == (
        6,
        len(chunks),
        len(chunks),
        0,
    )
    assert sorted(Path(p).name for p, _ in report.errors) == ["binary.txt", "empty.md"]
    assert report.new_collection
    collection = chroma.open_collection(client, "docs")
    assert report.context == chroma.get_context(collection).fingerprint
    assert chroma.get_context(collection).source_size == len(chunks)  # fitted on ALL chunks

    records = stored(client, "docs")
    assert records.keys() == {c.id for c in chunks}
    for c in chunks:
        text, meta = records[c.id]
        assert text == c.text
        assert (meta["source"], meta["chunk"]) == (c.source, c.index)

    phases = [e[0] for e in events]
    assert phases.index("load") < phases.index("chunk") < phases.index("context")
    assert phases.index("context") < phases.index("store")
    assert events[-1] == ("store", len(chunks), len(chunks))
    store_steps = [done for phase, done, _ in events if phase == "store"]
    assert store_steps == sorted(store_steps) and store_steps[0] == 0

    events.clear()
    again = index_paths(
        [docs], client=client, collection="docs", progress=lambda *e: events.append(e), **CHUNKING
    )
    assert (again.added, again.skipped, again.new_collection) == (0, len(chunks), False)
    assert again.context == report.context
    assert "context" not in {e[0] for e in events}  # an existing collection is never refitted
    assert [e for e in events if e[0] == "store"] == [("store", len(chunks), len(chunks))]
    assert len(stored(client, "docs")) == len(chunks)


def test_new_files_join_with_the_stored_context(tmp_path, client, tiny_model):
    docs = write_corpus(tmp_path / "docs", files=4)
    first = index_paths([docs], client=client, collection="grow", model=tiny_model, **CHUNKING)
    (docs / "new.txt").write_text("A brand new file about a flood on the river bank. " * 10)
    second = index_paths([docs], client=client, collection="grow", **CHUNKING)
    new_chunks = [c for c in expected_chunks(docs) if c.source == "docs/new.txt"]
    assert second.added == len(new_chunks) > 0
    assert second.skipped == first.chunks
    assert second.context == first.context
    assert len(stored(client, "grow")) == first.chunks + len(new_chunks)
    with pytest.raises(ValueError, match="chunk size 200 and overlap 20; this run uses 300 and 20"):
        index_paths([docs], client=client, collection="grow", chunk_size=300, chunk_overlap=20)
    assert len(stored(client, "grow")) == first.chunks + len(new_chunks)


def test_query_collection_matches_exact_cosine_ranking(tmp_path, client, tiny_model):
    docs = write_corpus(tmp_path / "docs", files=4)
    index_paths([docs], client=client, collection="query", model=tiny_model, **CHUNKING)
    collection = chroma.open_collection(client, "query")
    context = chroma.get_context(collection)
    chunks = expected_chunks(docs)
    question = "mortgage interest rate at the bank"
    hits = query_collection(collection, question, k=4)

    vectors = tiny_model.embed_documents([c.text for c in chunks], context=context)
    scores = vectors @ tiny_model.embed_queries([question], context=context)[0]
    best = np.argsort(-scores, kind="stable")[:4]
    assert [h.id for h in hits] == [chunks[i].id for i in best]
    np.testing.assert_allclose([h.score for h in hits], scores[best], atol=1e-4)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    for hit, i in zip(hits, best):
        assert (hit.text, hit.source, hit.chunk) == (
            chunks[i].text,
            chunks[i].source,
            chunks[i].index,
        )

    only = query_collection(collection, question, k=50, where={"source": "docs/doc01.txt"})
    assert only and {h.source for h in only} == {"docs/doc01.txt"}
    for bad_query, k in [("", 3), ("   ", 3), (question, 0), (question, True)]:
        with pytest.raises(ValueError):
            query_collection(collection, bad_query, k=k)


def test_refusals_write_nothing(tmp_path, client, tiny_model, make_checkpoint):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.bin").write_bytes(b"\x00")
    (junk / "b.txt").write_bytes(b"\x00\x00")
    with pytest.raises(DocumentError, match=r"Nothing to index.*b\.txt: binary data"):
        index_paths(
            [junk, tmp_path / "missing"], client=client, collection="junk-run", model=tiny_model
        )
    for name in ["x", "-bad", "has space", "a" * 500, "ends-"]:
        with pytest.raises(ValueError, match="Invalid collection name"):
            index_paths([junk], client=client, collection=name, model=tiny_model)
    assert client.list_collections() == []

    docs = write_corpus(tmp_path / "docs", files=3)
    first = index_paths([docs], client=client, collection="mix", model=tiny_model, **CHUNKING)
    other = make_checkpoint(
        "other",
        edit_weights=lambda w: {k: v * 1.01 if v.is_floating_point() else v for k, v in w.items()},
    )
    (docs / "more.txt").write_text("more text " * 50)
    with pytest.raises(ContextMismatchError):
        index_paths([docs], client=client, collection="mix", model=str(other), **CHUNKING)
    assert len(stored(client, "mix")) == first.chunks


# -- kill -9 at several points, then rerun ------------------------------------------------------

STORE_LINE = re.compile(r"^store (\d+)/(\d+)$")


def cli_index(docs: Path, db: Path, tiny_path: str, batch: int = 8) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cde_rag.cli",
        "index",
        str(docs),
        "--collection",
        "crash",
        "--db",
        str(db),
        "--model",
        tiny_path,
        "--chunk-size",
        str(CHUNKING["chunk_size"]),
        "--chunk-overlap",
        str(CHUNKING["chunk_overlap"]),
        "--batch-size",
        str(batch),
        "--progress",
        "lines",
    ]


# A child process indexing as `cde-rag index` does (same collection, cache and chunking), with
# a progress callback that prints each step as `--progress lines` would and parks at the
# phases named in argv[4] for argv[5] seconds, so a kill lands exactly there; argv[9] "prune"
# runs it as `cde-rag index --prune`.
PARKED_INDEX = """
import sys, time
from pathlib import Path
import chromadb
from cde_rag.cli.index import CACHE_FILE
from cde_rag.ingest import index_paths

docs, db, model, phases, seconds, size, overlap, batch, *prune = sys.argv[1:]

def progress(phase, done, total):
    print(f"{phase} {done}/{total}", file=sys.stderr, flush=True)
    if phase in phases.split(","):
        time.sleep(float(seconds))

client = chromadb.PersistentClient(db, settings=chromadb.Settings(anonymized_telemetry=False))
index_paths(
    [docs], client=client, collection="crash", model=model, chunk_size=int(size),
    chunk_overlap=int(overlap), batch_size=int(batch), embedding_cache=Path(db) / CACHE_FILE,
    progress=progress, prune=prune == ["prune"],
)
"""


def parked_index(
    docs: Path,
    db: Path,
    tiny_path: str,
    park: str,
    seconds: float,
    batch: int = 8,
    prune: bool = False,
) -> list[str]:
    """The child that indexes like `cli_index`, parking `seconds` at each step of `park`."""
    sizes = [str(CHUNKING["chunk_size"]), str(CHUNKING["chunk_overlap"]), str(batch)]
    paths = [str(docs), str(db), tiny_path]
    flags = ["prune"] if prune else []
    return [sys.executable, "-c", PARKED_INDEX, *paths, park, str(seconds), *sizes, *flags]


def run_and_kill(cmd: list[str], kill_when, *, delay: float = 0.0, timeout: float = 180):
    """Run `cmd` and SIGKILL it `delay` seconds after `kill_when(line)` is true for a line of
    its stderr. Returns (killed: it died of SIGKILL, stderr lines)."""
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if kill_when(lines[-1]):
                if delay:
                    threading.Event().wait(delay)
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=timeout)
    finally:
        watchdog.cancel()
        proc.stderr.close()
    assert proc.returncode in (0, -signal.SIGKILL), lines
    return proc.returncode == -signal.SIGKILL, lines


def inspect(db: Path, expected: dict[str, str]) -> tuple[set[str], str | None]:
    """Stored ids (all expected, texts intact) and the stored context's fingerprint."""
    client = chromadb.PersistentClient(str(db), settings=SETTINGS)
    try:
        names = {c.name for c in client.list_collections()}
        if "crash" not in names:
            return set(), None
        records = stored(client, "crash")
        assert records.keys() <= expected.keys()
        assert all(records[i][0] == expected[i] for i in records)
        raw = client.get_collection("crash", embedding_function=None)
        return set(records), chroma.get_context(raw).fingerprint
    finally:
        client.clear_system_cache()  # forget cached state: another process writes next


@pytest.mark.slow
def test_kill_9_at_several_points_then_rerun(tmp_path, tiny_path):
    docs = write_corpus(tmp_path / "docs", files=8)
    expected = {c.id: c.text for c in expected_chunks(docs)}
    total = len(expected)
    assert total > 60
    db = tmp_path / "db"
    cmd = cli_index(docs, db, tiny_path)

    def store_at_least(n):
        def check(line):
            m = STORE_LINE.match(line)
            return bool(m) and int(m.group(1)) >= n

        return check

    # 1. At a random moment while fitting, writing the context or creating the collection
    #    (parked at the first stored batch at the latest, so this run cannot finish).
    killed, _ = run_and_kill(
        parked_index(docs, db, tiny_path, park="store", seconds=3),
        lambda line: line == "context 0/1",
        delay=random.uniform(0, 0.5),
    )
    ids, context = inspect(db, expected)
    assert killed and len(ids) == 0

    # 2. Parked between stored batches: exactly the batches reported are there.
    killed, lines = run_and_kill(
        parked_index(docs, db, tiny_path, park="store", seconds=2.5), store_at_least(16)
    )
    ids, fingerprint = inspect(db, expected)
    last = [int(m.group(1)) for m in map(STORE_LINE.match, lines) if m][-1]
    assert killed and len(ids) == last and 16 <= last < total
    assert context in (None, fingerprint)  # a context stored before the kill is kept
    context = fingerprint

    # 3. At a random moment while embedding/storing later batches (it may also just finish).
    run_and_kill(cmd, store_at_least(len(ids) + 8), delay=random.uniform(0, 0.1))
    ids_before, fingerprint = inspect(db, expected)
    assert fingerprint == context and len(ids_before) >= len(ids) + 8

    # 4. The same command again finishes the job, skipping what is stored, same context.
    result = subprocess.run(
        [*cmd, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    assert result.returncode == 0, result.stderr
    if ids_before:
        assert (
            f"store: {len(ids_before)} of {total} chunks already stored, skipping them"
            in result.stderr
        )
    report = json.loads(result.stdout)
    assert (report["added"], report["skipped"]) == (total - len(ids_before), len(ids_before))
    assert report["context"] == context and report["new_collection"] is False
    ids, fingerprint = inspect(db, expected)
    assert ids == expected.keys() and fingerprint == context

    # 5. And once more (in this process): nothing to do.
    client = chromadb.PersistentClient(str(db), settings=SETTINGS)
    try:
        report = index_paths([docs], client=client, collection="crash", **CHUNKING)
        assert (report.added, report.skipped, report.context) == (0, total, context)
    finally:
        client.clear_system_cache()


# -- kill -9 while syncing changed and deleted files, then rerun ---------------------------------


def rewrite(docs: Path, names: list[str], seed: int) -> None:
    """Give each file new text: every chunk but (perhaps) a shared start changes."""
    rng = random.Random(seed)
    for name in names:
        path = docs / name
        kept = path.read_text().split("\n\n")[0]
        fresh = [" ".join(rng.choice(WORDS) for _ in range(50)) + "." for _ in range(3)]
        path.write_text("\n\n".join([kept, *fresh]))


def snapshot(db: Path) -> dict[str, tuple[str, dict]]:
    client = chromadb.PersistentClient(str(db), settings=SETTINGS)
    try:
        return stored(client, "crash")
    finally:
        client.clear_system_cache()  # another process writes next


@pytest.mark.slow
def test_kill_9_while_syncing_then_rerun_equals_a_clean_run(tmp_path, tiny_path, tiny_model):
    docs = write_corpus(tmp_path / "docs", files=8)
    db = tmp_path / "db"
    first = subprocess.run(
        cli_index(docs, db, tiny_path), capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr
    old = {c.id: c for c in expected_chunks(docs)}
    changed = ["doc01.txt", "doc02.txt", "doc04.txt", "doc05.txt"]
    rewrite(docs, changed, seed=3)
    (docs / "doc07.txt").unlink()
    new = {c.id: c for c in expected_chunks(docs)}
    changed_sources = {f"docs/{name}" for name in changed}

    def ids_of(chunks: dict, source: str) -> set[str]:
        return {i for i, c in chunks.items() if c.source == source}

    def assert_never_half_gone() -> dict:
        """Each changed file has all its old chunks or all its new ones (or both), and every
        stored chunk is one of them: a kill never leaves a file with neither."""
        records = snapshot(db)
        texts = {i: c.text for i, c in {**old, **new}.items()}
        assert all(texts[i] == text for i, (text, _) in records.items())
        for source in changed_sources:
            have = {i for i, (_, meta) in records.items() if meta["source"] == source}
            assert ids_of(old, source) <= have or ids_of(new, source) <= have, source
        return records

    def run(park: str, kill_when, delay: float = 0.0) -> tuple[bool, list[str]]:
        return run_and_kill(
            parked_index(docs, db, tiny_path, park=park, seconds=3, prune=True),
            kill_when,
            delay=delay,
        )

    # 1. Parked between stored batches of the new chunks: old chunks all still there.
    starts: list[int] = []

    def two_batches_in(line: str) -> bool:
        m = STORE_LINE.match(line)
        if m:
            starts.append(int(m.group(1)))
        return bool(m) and int(m.group(1)) >= starts[0] + 16

    killed, _ = run("store", two_batches_in)
    records = assert_never_half_gone()
    assert killed and old.keys() <= records.keys() and not new.keys() <= records.keys()

    # 2. Parked after every new chunk is stored and relabelled, before anything is deleted.
    killed, lines = run("remove", lambda line: line.startswith("remove 0/"))
    records = assert_never_half_gone()
    assert killed and (old.keys() | new.keys()) == records.keys()
    assert any(line.startswith("store") for line in lines)

    # 3. At a random moment while deleting (or just after).
    run("", lambda line: line.startswith("remove 0/"), delay=random.uniform(0, 0.05))
    assert_never_half_gone()

    # 4. The same command again finishes: exactly what a clean run of the folder stores.
    done = subprocess.run(
        [*cli_index(docs, db, tiny_path), "--prune", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == 0  # everything was stored before the kills
    records = snapshot(db)
    assert records.keys() == new.keys()
    clean = chromadb.PersistentClient(str(tmp_path / "clean"), settings=SETTINGS)
    index_paths([docs], client=clean, collection="crash", model=tiny_model, **CHUNKING)
    assert records == stored(clean, "crash")
    client = chromadb.PersistentClient(str(db), settings=SETTINGS)
    got = client.get_collection("crash").get(include=["documents", "embeddings"])
    context = chroma.get_context(client.get_collection("crash"))
    expected = tiny_model.embed_documents(got["documents"], context=context)
    np.testing.assert_allclose(np.asarray(got["embeddings"]), expected, rtol=0, atol=1e-5)
