"""Embed corpora larger than one machine on Ray Data, with one corpus context for all of it.

- `fit_context(ds, model)`: the context `model.fit_context(texts)` would fit on the dataset's
  rows, without bringing the corpus to the driver: only the row count and the N picked rows.
- `embed_dataset(ds, model, context)`: the rows plus their `embedding`, computed by an actor
  pool (CPU or GPU) that loads the model and the context file once per actor.
- `index_folder(paths, out, model)`: the whole job for files on disk, with the same loading,
  chunking and content ids as `cde-rag index`; resumable through Ray Data's checkpointing.

Requires the `ray` extra (`pip install 'cde-rag[ray]'`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy
from tqdm.auto import tqdm

from .context import DEFAULT_SEED, CorpusContext, sample_minicorpus
from .documents import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_PAGES,
    DocumentError,
    check_chunk_sizes,
    load_documents,
)
from .embeddings_folder import (
    CHECKPOINT,
    CONTEXT,
    DATA,
    EMBEDDING,
    ERROR,
    INPUT,
    EmbeddingsFolder,
    EmbeddingsFolderError,
    is_uri,
    read_bytes,
    write_bytes,
)
from .errors import ContextMismatchError, InputError
from .ingest import versioned_chunks
from .model import CDEModel, DTypeLike, check_texts, resolve_dtype, shared_model

DEFAULT_MODEL = "jxm/cde-small-v2"
ModelLike = str | os.PathLike[str] | CDEModel
ContextLike = CorpusContext | str | os.PathLike[str]
# Rows per Ray batch, each actor's unit of work.
DEFAULT_BATCH = 64
# Test hook: seconds each actor sleeps per batch, so a crash test can kill a job mid-run.
EMBED_DELAY_ENV = "CDE_RAG_TEST_EMBED_DELAY"


# -- the context -------------------------------------------------------------------------------


def fit_context(
    ds: ray.data.Dataset,
    model: ModelLike,
    *,
    text_column: str = "text",
    seed: int = DEFAULT_SEED,
    revision: str | None = None,
    batch_size: int | None = None,
    show_progress: bool | None = None,
) -> CorpusContext:
    """The context `model.fit_context(texts, seed)` fits on the dataset's rows in order.

    The sampling rule needs only the row count n (`ds.count()`, which Parquet footers answer
    without reading data) and the N picked rows. The dataset is then read once, in order
    (`preserve_order`), and a small task takes the picked rows from the blocks that hold them,
    so only N texts reach the driver. Rows are located by counting block lengths in that
    ordered stream, not by any row id. The first stage runs on the driver (N texts).
    Rows that are not picked are not checked here; `embed_dataset` reports any bad one.
    """
    engine = _driver_model(model, revision)
    _check_column(ds, text_column)
    n = ds.count()
    picks = [int(i) for i in sample_minicorpus(range(n), engine.corpus_size, seed)]
    found = _rows_at(ds.select_columns([text_column]), sorted(set(picks)), text_column, n)
    minicorpus = check_texts([found[i] for i in picks], f"{text_column!r} rows")
    context = engine.context(minicorpus, batch_size=batch_size, show_progress=show_progress)
    return replace(context, kind="fitted", seed=seed, source_size=n)


def _rows_at(ds: ray.data.Dataset, wanted: list[int], column: str, n: int) -> dict[int, Any]:
    """`{row: value}` for the sorted row positions `wanted`, in the dataset's order."""
    options = ds.context.execution_options
    preserve = options.preserve_order
    options.preserve_order = True
    pending: list[tuple[list[int], Any]] = []
    position = next_wanted = 0
    try:
        bundles = ds.iter_internal_ref_bundles()
        for bundle in bundles:
            for entry, part in zip(bundle.blocks, bundle.slices, strict=True):
                start, end = (part.start_offset, part.end_offset) if part else (0, None)
                if end is None:
                    end = entry.metadata.num_rows
                    if end is None:
                        end = ray.get(_block_rows.remote(entry.ref))
                stop = position + end - start
                rows = []
                while next_wanted < len(wanted) and wanted[next_wanted] < stop:
                    rows.append(wanted[next_wanted])
                    next_wanted += 1
                if rows:
                    local = [start + row - position for row in rows]
                    pending.append((rows, _take_rows.remote(entry.ref, local, column)))
                position = stop
            if next_wanted == len(wanted):
                break  # the rest of the dataset is not needed
    finally:
        options.preserve_order = preserve
    if next_wanted < len(wanted):
        raise ValueError(
            f"The dataset counted {n} rows but yielded only {position}: it changed while the "
            "context was being fitted. Fit on a dataset that is not being written to."
        )
    found: dict[int, Any] = {}
    for rows, ref in pending:
        found.update(zip(rows, ray.get(ref), strict=True))
    return found


@ray.remote(num_cpus=0)
def _take_rows(block: Any, rows: list[int], column: str) -> list[Any]:
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(block).to_arrow().column(column).take(rows).to_pylist()


@ray.remote(num_cpus=0)
def _block_rows(block: Any) -> int:
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(block).num_rows()


def _check_column(ds: ray.data.Dataset, column: str) -> None:
    names = ds.columns() or []
    if column not in names:
        raise ValueError(
            f"The dataset has no column {column!r} (it has {', '.join(map(repr, names))}); "
            "pass the column holding the texts as text_column=."
        )


def _driver_model(model: ModelLike, revision: str | None) -> CDEModel:
    if isinstance(model, CDEModel):
        return model
    return shared_model(model, revision=revision)


# -- embedding ---------------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class RowCounter:
    """Rows embedded so far, added to by every actor: the driver polls it for a progress bar."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, rows: int) -> None:
        self.rows += rows

    def total(self) -> int:
        return self.rows


def embed_dataset(
    ds: ray.data.Dataset,
    model: ModelLike,
    context: ContextLike,
    *,
    text_column: str = "text",
    context_path: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    actors: int | tuple[int, int] = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    dtype: DTypeLike = None,
    batch_size: int = DEFAULT_BATCH,
    model_batch_size: int | None = None,
    counter: Any = None,
) -> ray.data.Dataset:
    """The dataset's columns plus `embedding` (float32, model.dim) and `error`.

    Each actor of the pool (`actors` = a size, or `(min, max)` to autoscale) loads the model by
    id or path and reads the context from a file, checking its fingerprint; a context object
    is saved to `context_path` (a path or URI every node can read) first, or, on a one-node
    Ray, to a local temporary file. GPU actors: `num_gpus=1` (and `dtype="bfloat16"` for speed;
    float32, the default, matches `CDEModel.embed_documents` within float noise).

    A text the engine refuses (None, not a string, a lone surrogate) does not stop the job:
    its row gets a null `embedding` and the reason in `error`. `counter`, a `RowCounter`,
    receives the number of rows of every batch.
    """
    source, revision = _model_source(model, revision)
    compute = _pool(actors)
    _check_cpus_left(actors, num_cpus)
    dtype_name = str(resolve_dtype(dtype)).removeprefix("torch.")  # refuses an unknown dtype
    ctx, uri = _context_file(context, context_path)
    if isinstance(model, CDEModel):
        model.check_context(ctx)
    _check_column(ds, text_column)
    device = "cuda" if num_gpus else "cpu"
    return ds.map_batches(
        _DocumentEmbedder,
        fn_constructor_kwargs={
            "model": source,
            "revision": revision,
            "context_uri": uri,
            "context_fingerprint": ctx.fingerprint,
            "text_column": text_column,
            "device": device,
            "dtype": dtype_name,
            "batch_size": model_batch_size,
            "threads": max(1, int(num_cpus)),
            "counter": counter,
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=compute,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )


class _DocumentEmbedder:
    """One actor of the pool: the model and the context, loaded once, embed every batch."""

    def __init__(
        self,
        *,
        model: str,
        revision: str | None,
        context_uri: str,
        context_fingerprint: str,
        text_column: str,
        device: str,
        dtype: str | None,
        batch_size: int | None,
        threads: int,
        counter: Any,
    ):
        import torch

        torch.set_num_threads(threads)
        context = CorpusContext.from_bytes(read_bytes(context_uri), source=context_uri)
        if context.fingerprint != context_fingerprint:
            raise ContextMismatchError(
                f"The context file {context_uri} now holds context {context.fingerprint[:12]}, "
                f"but this job embeds with {context_fingerprint[:12]}: it was replaced after "
                "the job started. Give each context its own file and run the job again."
            )
        self.model = CDEModel.from_pretrained(model, revision=revision, device=device, dtype=dtype)
        self.context = self.model.check_context(context)
        self.text_column = text_column
        self.batch_size = batch_size
        self.counter = counter
        self.delay = float(os.environ.get(EMBED_DELAY_ENV) or 0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        errors: list[str | None] = [None] * len(texts)
        good = []
        label = repr(self.text_column)
        for i, text in enumerate(texts):
            try:
                check_texts([text], label)
            except InputError as exc:  # the row's own problem: report it, embed the rest
                errors[i] = str(exc).replace(f"{label}[0]", label, 1)
            else:
                good.append(i)
        vectors = np.zeros((len(texts), self.model.dim), dtype=np.float32)
        if good:
            vectors[good] = self.model.embed_documents(
                [texts[i] for i in good],
                context=self.context,
                batch_size=self.batch_size,
                show_progress=False,
            )
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)),
            self.model.dim,
            mask=pa.array([error is not None for error in errors]),
        )
        if self.delay:
            time.sleep(self.delay)
        if self.counter is not None:  # waited for, so the count is complete when the job is
            ray.get(self.counter.add.remote(len(texts)))
        return _with_column(
            _with_column(batch, EMBEDDING, embedding), ERROR, pa.array(errors, pa.string())
        )


def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def _pool(actors: int | tuple[int, int]) -> ActorPoolStrategy:
    sizes = (actors, actors) if isinstance(actors, int) else tuple(actors)
    if (
        len(sizes) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes)
        or not 1 <= sizes[0] <= sizes[1]
    ):
        raise ValueError(
            f"actors must be a positive pool size or (min, max) with 1 <= min <= max, "
            f"got {actors!r}."
        )
    if sizes[0] == sizes[1]:
        return ActorPoolStrategy(size=sizes[0])
    return ActorPoolStrategy(min_size=sizes[0], max_size=sizes[1])


def _model_source(model: ModelLike, revision: str | None) -> tuple[str, str | None]:
    """What an actor passes to `CDEModel.from_pretrained`: a hub id, or an absolute folder
    path (actors do not share the driver's working folder)."""
    if isinstance(model, CDEModel):
        name, revision = model.checkpoint.name, model.checkpoint.revision
    else:
        name = os.fspath(model)
    local = Path(name).expanduser()
    return (str(local.resolve()) if local.is_dir() else name), revision


def _context_file(
    context: ContextLike, context_path: str | os.PathLike[str] | None
) -> tuple[CorpusContext, str]:
    """`(context, location)`: the file each actor reads the context from."""
    if not isinstance(context, CorpusContext):
        location = os.fspath(context)
        if not is_uri(location):
            location = str(Path(location).expanduser().resolve())
        return CorpusContext.from_bytes(read_bytes(location), source=location), location
    if context_path is not None:
        location = os.fspath(context_path)
        if not is_uri(location):
            location = str(Path(location).expanduser().resolve())
        write_bytes(location, context.to_bytes())
        return context, location
    if ray.is_initialized() and sum(node["Alive"] for node in ray.nodes()) > 1:
        raise ValueError(
            "This Ray cluster has several nodes, and actors read the context from a file: pass "
            "context_path= on storage every node can read (s3://..., a shared folder), or the "
            "path of a saved context file as the context."
        )
    folder = Path(tempfile.gettempdir()) / "cde-rag-contexts"
    location = folder / f"{context.fingerprint}.safetensors"
    if not location.is_file():
        context.save(location)
    return context, str(location)


# -- the folder job ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RayIndexReport:
    """What `index_folder` did.

    `embedded` rows were embedded by this run and `already` were written by earlier runs;
    `rows` are in the output now, `failed` of them with a text the engine refused (their
    `error` column says why). `errors` lists `(path, reason)` for files that were not read.
    """

    out: str
    files: int
    chunks: int
    embedded: int
    already: int
    rows: int
    failed: int
    context: str
    new_context: bool
    errors: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        how = "fitted on these chunks" if self.new_context else "kept from the output"
        return (
            f"Embedded {self.files} file(s) into {self.out}: {self.chunks} chunks, "
            f"{self.embedded} embedded now, {self.already} already written, {self.failed} "
            f"failed; {self.rows} rows in the output; {len(self.errors)} file(s) skipped; "
            f"context {self.context[:12]} ({how})."
        )


def _check_cpus_left(actors: int | tuple[int, int], num_cpus: float) -> None:
    """Refuse a pool that would take every CPU of the running Ray: Ray Data's read and write
    tasks need one, and without it the job waits forever instead of failing."""
    if not ray.is_initialized():
        return  # Ray Data starts a local Ray later, sized to this machine: nothing to read yet
    smallest = actors if isinstance(actors, int) else actors[0]
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus and smallest * num_cpus > cpus - 1:
        raise ValueError(
            f"An actor pool of {smallest} actor(s) with {num_cpus:g} CPU(s) each takes "
            f"{smallest * num_cpus:g} of this Ray's {cpus:g} CPUs, leaving less than one for Ray "
            "Data's read and write tasks, so the job would never finish. Use fewer actors or "
            "fewer CPUs per actor (actors=, num_cpus=; on the command line --actors, "
            "--num-cpus 0.5), or a Ray with more CPUs."
        )


def index_folder(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    model: ModelLike | None = None,
    *,
    address: str | None = None,
    revision: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    seed: int = DEFAULT_SEED,
    recursive: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_chars: int = DEFAULT_MAX_CHARS,
    actors: int | tuple[int, int] = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    dtype: DTypeLike = None,
    batch_size: int = DEFAULT_BATCH,
    rows_per_shard: int = 1000,
    show_progress: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RayIndexReport:
    """Load, chunk and embed files on Ray into `out` (a folder or a URI such as s3://...).

    Files are loaded and chunked on the driver exactly as `cde-rag index` does (same sources,
    chunks and content ids), written to `out/input/`, the context is fitted on all chunks
    (first run only; later runs keep it, as an existing collection does), and the chunks not
    written yet are embedded by the actor pool into `out/data/`. Run it again after a crash,
    or with new files: Ray Data's checkpoint (keyed on the chunk id) skips every row already
    written, so nothing is embedded twice. `address` connects to a running Ray cluster when
    this process has not started Ray yet (else a local Ray is started and stopped again).
    `max_bytes`, `max_pages` and `max_chars` skip files as `cde-rag index` does.
    `progress(done, total)`, when given, follows the chunks written instead of the bar.
    """
    check_chunk_sizes(chunk_size, chunk_overlap)
    if not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be a positive integer, got {rows_per_shard!r}.")
    folder = EmbeddingsFolder(out)
    manifest = folder.read_manifest() or {}
    _check_same_chunking(folder, manifest, chunk_size, chunk_overlap)
    loaded = load_documents(
        paths, recursive=recursive, max_bytes=max_bytes, max_pages=max_pages, max_chars=max_chars
    )
    # Labelled as `cde-rag index` stores them, so a collection loaded from the output syncs.
    chunks = versioned_chunks(loaded.documents, chunk_size, chunk_overlap)
    if not chunks:
        detail = "; ".join(f"{p}: {why}" for p, why in loaded.skipped[:3]) or "no files given"
        raise DocumentError(
            f"Nothing to embed: no readable .txt/.md/.pdf/.html file with text among the paths "
            f"given ({detail})."
        )
    if model is None:
        model = manifest.get("model") or DEFAULT_MODEL
        revision = revision or manifest.get("revision")
    source, revision = _model_source(model, revision)
    record = {
        "model": source,
        "revision": revision,
        "chunk_size": chunk_size,
        "chunk_overlap": chunk_overlap,
        "seed": seed,
        "complete": False,
    }
    # Every refusal comes before the first write, so a refused run changes nothing.
    context = folder.read_context()
    new_context = context is None
    if context is None or isinstance(model, CDEModel) or source != manifest.get("model"):
        engine = _driver_model(model, revision)
        if context is not None:
            engine.check_context(context)
    folder.write_manifest({**manifest, **record})
    folder.write_input(chunks, rows_per_shard)
    if context is None:  # the chunks are here already: fit as `cde-rag index` does
        context = engine.fit_context([c.text for c in chunks], seed=seed)
        folder.save_context(context)
    already = _written_ids(folder, [c.id for c in chunks])
    embedded = _embed_into(
        folder,
        address,
        source,
        revision,
        total=len(chunks),
        already=already,
        show_progress=show_progress,
        progress=progress,
        rows_per_shard=rows_per_shard,
        actors=actors,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        dtype=dtype,
        batch_size=batch_size,
    )
    rows, failed = folder.count_rows()
    folder.write_manifest(
        {
            **record,
            "model_fingerprint": context.model_fingerprint,
            "context": context.fingerprint,
            "dim": context.dim,
            "rows": rows,
            "failed": failed,
            "complete": True,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return RayIndexReport(
        out=folder.location,
        files=len(loaded.documents),
        chunks=len(chunks),
        embedded=embedded,
        already=already,
        rows=rows,
        failed=failed,
        context=context.fingerprint,
        new_context=new_context,
        errors=list(loaded.skipped),
    )


def _check_same_chunking(
    folder: EmbeddingsFolder, manifest: dict[str, Any], chunk_size: int, chunk_overlap: int
) -> None:
    """Chunking the same files a second way would write every passage twice (new ids)."""
    recorded = (manifest.get("chunk_size"), manifest.get("chunk_overlap"))
    if manifest and recorded != (chunk_size, chunk_overlap):
        raise EmbeddingsFolderError(
            f"{folder.location} was written with chunk size {recorded[0]} and overlap "
            f"{recorded[1]}; this run uses {chunk_size} and {chunk_overlap}, which would store "
            "every passage twice. Use the same values, or write to a new folder."
        )


def _embed_into(
    folder: EmbeddingsFolder,
    address: str | None,
    model: str,
    revision: str | None,
    *,
    total: int,
    already: int,
    show_progress: bool | None,
    progress: Callable[[int, int], None] | None,
    rows_per_shard: int,
    **options: Any,
) -> int:
    """Embed the input rows not written yet into data/; returns how many were embedded.

    Ray Data's checkpointing (`CheckpointConfig(id_column="id")`) filters the ids that earlier
    runs committed right after the read, and commits each written shard's ids with a two-phase
    commit, so a shard half-written by a killed run is removed and redone, never duplicated.
    """
    from ray.data.checkpoint import CheckpointConfig

    if progress is not None:
        progress(already, total)
    if already == total:
        return 0  # nothing to embed: do not start Ray and a job (and actors) to learn that
    started = _connect(address)
    quiet = _QuietRayData()
    try:
        inputs = ray.data.read_parquet(folder.uri(INPUT))
        inputs.context.checkpoint_config = CheckpointConfig(
            id_column="id",
            checkpoint_path=folder.uri(CHECKPOINT),
            delete_checkpoint_on_success=False,  # it is what makes the next run skip these rows
        )
        inputs.context.enable_progress_bars = False  # one bar for the whole job, below
        counter = RowCounter.remote()
        embedded = embed_dataset(
            inputs.repartition(target_num_rows_per_block=rows_per_shard),
            model,
            folder.uri(CONTEXT),
            revision=revision,
            counter=counter,
            **options,
        )
        bar = tqdm(
            total=total,
            initial=already,
            desc="Embedding on Ray" + (f" ({already} already written)" if already else ""),
            unit="chunk",
            disable=show_progress is False or progress is not None,
        )
        try:
            return _write_following(embedded, folder.uri(DATA), counter, bar, progress)
        finally:
            bar.close()
    finally:
        quiet.restore()
        if started:
            ray.shutdown()


def _write_following(
    embedded: ray.data.Dataset,
    target: str,
    counter: Any,
    bar: Any,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Write the dataset as Parquet in a thread while the bar (or `progress`) follows the rows
    embedded."""
    failure: list[BaseException] = []

    def write() -> None:
        try:
            embedded.write_parquet(target)
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=write, name="cde-rag-ray-write", daemon=True)
    writer.start()
    start, done = bar.n, 0
    while writer.is_alive():
        writer.join(0.5)
        now = ray.get(counter.total.remote())
        if now != done:
            done = now
            bar.n = start + done
            bar.refresh()
            if progress is not None:
                progress(bar.n, bar.total)
    if failure:
        raise failure[0]
    return done


def _written_ids(folder: EmbeddingsFolder, ids: list[str]) -> int:
    """How many of `ids` earlier runs committed: the ids in Ray Data's committed checkpoint
    files (`_checkpoint/*.parquet`; `*.pending.parquet` are uncommitted and get redone)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    from pyarrow import fs

    listing = fs.FileSelector(folder.path(CHECKPOINT), allow_not_found=True)
    committed = [
        info.path
        for info in folder.fs.get_file_info(listing)
        if info.type == fs.FileType.File
        and info.path.endswith(".parquet")
        and not info.path.endswith(".pending.parquet")
    ]
    if not committed:
        return 0
    written = pads.dataset(committed, filesystem=folder.fs, format="parquet").to_table(["id"])
    return pc.sum(pc.is_in(pa.array(ids), value_set=written.column("id"))).as_py() or 0


def _connect(address: str | None) -> bool:
    """Start or join Ray unless this process already did; True when we started it."""
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    return True


class _QuietRayData:
    """Ray Data logs every execution plan, and a warning that its bars are off; the job's own
    bar says what happens, and errors still surface."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("ray.data")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def restore(self) -> None:
        self.logger.setLevel(self.level)


__all__ = [
    "RayIndexReport",
    "RowCounter",
    "embed_dataset",
    "fit_context",
    "index_folder",
]
