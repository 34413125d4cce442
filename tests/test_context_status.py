"""Context staleness (issue 15 part 2): counts since the fit follow adds and deletes, the drift
score is about 0 for an unchanged corpus and grows when the corpus moves to other topics, and a
re-fit (rebuild through the staging collection) resets both; the same through the CLI."""

from __future__ import annotations

import json

import chromadb
import numpy as np
import pytest
from topic_texts import CODE, RIVERS, prose

from cde_rag.chroma import (
    REFIT_THRESHOLD,
    SourceRecords,
    context_status,
    create_collection,
    delete_source,
    drift_score,
    open_collection,
    rebuild_collection,
    update_sources,
)
from cde_rag.chroma.tracking import BASELINE_KEY, REMOVED_KEY
from cde_rag.cli import main
from cde_rag.context import CorpusContext

SETTINGS = chromadb.Settings(anonymized_telemetry=False)


def sources(texts: list[str], prefix: str, per_file: int = 10) -> list[SourceRecords]:
    """The texts as files of `per_file` chunks each."""
    return [
        SourceRecords(f"{prefix}{i // per_file}.txt", texts[i : i + per_file])
        for i in range(0, len(texts), per_file)
    ]


@pytest.fixture
def client(tmp_path):
    return chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS)


def test_counts_and_drift_follow_the_corpus_and_a_refit_resets_them(client, tiny_model):
    rivers = prose(RIVERS, 120, seed=0)
    col = create_collection(client, "notes", model=tiny_model, corpus=rivers)
    update_sources(col, sources(rivers, "rivers"))
    fresh = context_status(col)
    assert (fresh.fitted_on, fresh.records, fresh.added, fresh.removed) == (120, 120, 0, 0)
    assert fresh.sampled == 120 and fresh.drift < 0.02 and not fresh.refit_recommended

    # Half the corpus replaced by documents on another topic.
    code = prose(CODE, 120, seed=1)
    for i in range(6):
        delete_source(col, f"rivers{i}.txt")
    update_sources(col, sources(code[:60], "code"))
    half = context_status(col)
    assert (half.records, half.added, half.removed) == (120, 60, 60)
    assert half.drift > REFIT_THRESHOLD and half.refit_recommended
    assert "rebuild_collection" in half.advice()

    # All of it replaced: further still.
    for i in range(6, 12):
        delete_source(col, f"rivers{i}.txt")
    update_sources(col, sources(code[60:], "more-code"))
    replaced = context_status(col)
    assert (replaced.records, replaced.added, replaced.removed) == (120, 120, 120)
    assert replaced.drift > half.drift

    # A re-fit (zero-downtime rebuild through the staging collection) resets the status.
    rebuilt = rebuild_collection(client, "notes")
    after = context_status(rebuilt)
    assert (after.fitted_on, after.records, after.added, after.removed) == (120, 120, 0, 0)
    assert after.context != fresh.context
    assert after.drift < 0.02 and not after.refit_recommended
    print(
        f"drift: unchanged {fresh.drift:.4f}, half replaced {half.drift:.4f}, all replaced "
        f"{replaced.drift:.4f}, after the re-fit {after.drift:.4f}"
    )


def test_the_status_is_json_friendly_and_sample_0_skips_the_drift(client, tiny_model):
    texts = prose(RIVERS, 40, seed=2)
    col = create_collection(client, "notes", model=tiny_model, corpus=texts)
    update_sources(col, sources(texts, "rivers"))
    status = context_status(col, sample=0)
    assert (status.drift, status.sampled, status.refit_recommended) == (None, 0, False)
    info = json.loads(json.dumps(context_status(col, sample=8).to_dict()))
    assert info["sampled"] == 8 and info["threshold"] == REFIT_THRESHOLD
    assert info["refit_recommended"] is False and "still fits" in info["advice"]
    assert info["records"] == info["fitted_on"] == 40 and info["context"] == status.context
    with pytest.raises(ValueError, match="non-negative integer"):
        context_status(col, sample=-1)


def test_a_collection_made_before_counts_were_tracked_says_they_are_unknown(client, tiny_model):
    texts = prose(RIVERS, 20, seed=3)
    col = create_collection(client, "old", model=tiny_model, corpus=texts)
    update_sources(col, sources(texts, "rivers"))
    col.modify(metadata={k: v for k, v in col.metadata.items() if k != BASELINE_KEY})
    delete_source(col, "rivers0.txt")  # not counted: the baseline is unknown
    status = context_status(open_collection(client, "old"), sample=0)
    assert (status.added, status.removed, status.records) == (None, None, 10)
    assert client.get_collection("old").metadata[REMOVED_KEY] == 0  # left as it was


def _context(rows: np.ndarray, kind: str = "embeddings", **more) -> CorpusContext:
    return CorpusContext(
        embeddings=rows, model_name="m", model_fingerprint="f" * 32, kind=kind, **more
    )


def test_drift_score_is_the_mean_shift_in_units_of_the_context_spread():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(64, 8)).astype(np.float32)
    ctx = _context(rows)
    spread = ((rows - rows.mean(axis=0)) ** 2).sum(axis=1).mean()
    shift = np.full(8, 0.5, dtype=np.float32)
    # The whole population, shifted: no sampling noise, the exact squared shift over spread.
    assert drift_score(ctx, rows + shift, population=64) == pytest.approx(
        float((shift**2).sum() / spread), rel=1e-5
    )
    assert drift_score(ctx, rows, population=64) == pytest.approx(0.0, abs=1e-9)
    # Scale-free: the same corpus measured in other units scores the same.
    assert drift_score(_context(rows * 10), (rows + shift) * 10, population=64) == pytest.approx(
        drift_score(ctx, rows + shift, population=64), rel=1e-4
    )
    # Samples of an unchanged distribution score about 0 (the noise terms cancel the bias).
    fitted = _context(rows, kind="fitted", seed=0, source_size=10_000)
    draws = [drift_score(fitted, rng.normal(size=(32, 8)), population=10_000) for _ in range(200)]
    assert np.mean(draws) < 0.05
    with pytest.raises(ValueError, match="shape"):
        drift_score(ctx, np.zeros((3, 5)), population=3)


def test_cli_context_status(tmp_path, tiny_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(prose(RIVERS, 6, seed=4)):
        (docs / f"note{i}.txt").write_text((text + "\n\n") * 3)
    db = str(tmp_path / "db")
    index = ["index", str(docs), "-c", "notes", "--db", db, "--progress", "none"]
    assert main([*index, "--model", tiny_path, "--chunk-size", "300", "--chunk-overlap", "0"]) == 0
    capsys.readouterr()
    assert main(["context", "status", "-c", "notes", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "records: " in out and "removed: 0" in out and "still fits" in out
    assert main(["context", "status", "-c", "notes", "--db", db, "--json", "--sample", "0"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["drift"] is None and info["added"] == 0 and info["records"] == info["fitted_on"]
    assert main(["context", "status", "-c", "nothing", "--db", db]) == 1
    assert "no collection 'nothing'" in capsys.readouterr().err
