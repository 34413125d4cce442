"""The folder a distributed embedding job writes, and that loaders read back.

Layout (a local folder, or any URI pyarrow can open, e.g. s3://bucket/corpus):

- `manifest.json`: model, revision, model and context fingerprints, chunking, counts, and
  `complete` (false while a job runs; loaders refuse an unfinished folder);
- `context.safetensors`: the corpus context every vector in `data/` was embedded with;
- `input/part-NNNNN.parquet`: the chunks to embed (id, source, chunk, text, metadata), written
  before any embedding, so the content ids exist in the input that a resumed run filters;
- `data/*.parquet`: the embedded rows (the input columns plus `embedding`, `error`);
- `_checkpoint/`: Ray Data's record of the ids already written (it makes re-runs resumable).

Only pyarrow is needed here, so loading an output into a store does not need Ray.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ._files import write_atomic
from .context import CorpusContext
from .errors import CDEError, ContextError
from .progress import progress_bar_enabled

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs

    from .documents import Chunk

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CONTEXT = "context.safetensors"
INPUT = "input"
DATA = "data"
CHECKPOINT = "_checkpoint"
# Columns of the input shards; the embedded shards add EMBEDDING and ERROR.
INPUT_COLUMNS = ("id", "source", "chunk", "text", "metadata")
EMBEDDING = "embedding"
ERROR = "error"


class EmbeddingsFolderError(CDEError, ValueError):
    """An output folder is missing, unfinished, or was made another way."""


def is_uri(location: str | os.PathLike[str]) -> bool:
    return "://" in os.fspath(location)


def filesystem(location: str | os.PathLike[str]) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem and path for a local folder or a URI (s3://, gs://, hdfs://...)."""
    from pyarrow import fs

    if is_uri(location):
        return fs.FileSystem.from_uri(os.fspath(location))
    return fs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The bytes of a local file or a URI; a missing one is a FileNotFoundError naming it."""
    if not is_uri(location):
        return Path(location).expanduser().read_bytes()
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {location}") from None


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Write a whole file: atomically for local paths; object stores publish whole objects."""
    if not is_uri(location):
        write_atomic(location, data)
        return
    fs, path = filesystem(location)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


class EmbeddingsFolder:
    """One output location; every path in it is derived here, so writers and readers agree."""

    def __init__(self, location: str | os.PathLike[str]):
        self.location = os.fspath(location)
        self.fs, self.root = filesystem(location)

    def __repr__(self) -> str:
        return f"EmbeddingsFolder({self.location!r})"

    def path(self, *parts: str) -> str:
        """A path inside the folder, as the folder's filesystem spells it."""
        return posixpath.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """A location inside the folder that Ray's readers and writers (and remote actors) can
        open: the URI for object stores, the absolute path for local folders."""
        if is_uri(self.location):
            return posixpath.join(self.location.rstrip("/"), *parts)
        return self.path(*parts)

    def exists(self, *parts: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self.path(*parts)).type != fs.FileType.NotFound

    # -- manifest and context ------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None for a folder no job has written to yet."""
        if not self.exists(MANIFEST):
            return None
        try:
            manifest = json.loads(read_bytes(self.uri(MANIFEST)))
        except (ValueError, UnicodeDecodeError) as exc:
            raise EmbeddingsFolderError(
                f"{self.uri(MANIFEST)} is not valid JSON ({exc}); it is not a cde-rag output "
                "folder, or it was damaged: write the job to a new folder."
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != "cde-rag-embeddings":
            raise EmbeddingsFolderError(
                f"{self.location} is not a cde-rag embeddings folder (its manifest.json was not "
                "written by cde-rag); pick another output folder."
            )
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise EmbeddingsFolderError(
                f"{self.location} uses output schema {manifest.get('schema_version')!r}; this "
                f"cde-rag reads version {SCHEMA_VERSION}. Upgrade cde-rag, or embed again into "
                "a new folder."
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        record = {"format": "cde-rag-embeddings", "schema_version": SCHEMA_VERSION, **manifest}
        write_bytes(self.uri(MANIFEST), json.dumps(record, indent=2).encode())

    def complete_manifest(self) -> dict[str, Any]:
        """The manifest of a finished job; anything else is refused with what to do."""
        manifest = self.read_manifest()
        if manifest is None:
            raise EmbeddingsFolderError(
                f"{self.location} has no {MANIFEST}: it is not the output of an embedding job "
                "(cde_rag.ray.index_folder / cde-rag index --engine ray)."
            )
        if not manifest.get("complete"):
            raise EmbeddingsFolderError(
                f"The embedding job writing {self.location} has not finished (it is running, or "
                "it was interrupted). Run the same job again to finish it, then load."
            )
        return manifest

    def finished(self) -> tuple[dict[str, Any], CorpusContext]:
        """The manifest and context of a finished job, checked against each other: what a
        loader needs before it writes anything."""
        manifest = self.complete_manifest()
        context = self.read_context()
        if context is None or context.fingerprint != manifest.get("context"):
            raise ContextError(
                f"{self.location} has no context file matching its manifest; the folder is "
                "damaged. Run the embedding job again into a new folder."
            )
        return manifest, context

    def read_context(self) -> CorpusContext | None:
        if not self.exists(CONTEXT):
            return None
        return CorpusContext.from_bytes(read_bytes(self.uri(CONTEXT)), source=self.uri(CONTEXT))

    def save_context(self, context: CorpusContext) -> None:
        write_bytes(self.uri(CONTEXT), context.to_bytes())

    # -- shards --------------------------------------------------------------------------------

    def write_input(self, chunks: Sequence[Chunk], rows_per_file: int) -> int:
        """Write the chunks as input shards, replacing the previous input; returns the count.

        Shards are written whole under their final names (same chunks, same files), and
        shards left over from a larger earlier input are removed.
        """
        import pyarrow.parquet as pq
        from pyarrow import fs

        files = 0
        for files, start in enumerate(range(0, len(chunks), rows_per_file), 1):
            table = chunk_table(chunks[start : start + rows_per_file])
            name = self.path(INPUT, f"part-{files - 1:05d}.parquet")
            self.fs.create_dir(self.path(INPUT), recursive=True)
            with self.fs.open_output_stream(f"{name}.tmp") as stream:
                pq.write_table(table, stream)
            self.fs.move(f"{name}.tmp", name)
        keep = {self.path(INPUT, f"part-{i:05d}.parquet") for i in range(files)}
        listing = fs.FileSelector(self.path(INPUT), allow_not_found=True)
        for info in self.fs.get_file_info(listing):
            if info.type == fs.FileType.File and info.path not in keep:
                self.fs.delete_file(info.path)
        return len(chunks)

    def data_files(self) -> list[str]:
        from pyarrow import fs

        listing = fs.FileSelector(self.path(DATA), allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(listing)
            if info.type == fs.FileType.File and info.path.endswith(".parquet")
        )

    def data_batches(
        self, columns: Sequence[str] | None = None, batch_size: int = 4096
    ) -> Iterator[pa.RecordBatch]:
        """The embedded rows, a bounded batch at a time (never the whole folder in memory)."""
        import pyarrow.dataset as ds

        files = self.data_files()
        if not files:
            return
        dataset = ds.dataset(files, filesystem=self.fs, format="parquet")
        yield from dataset.to_batches(
            columns=list(columns) if columns else None, batch_size=batch_size
        )

    def embedded_batches(
        self,
        columns: Sequence[str],
        batch_size: int = 4096,
        read: Callable[[int], None] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The `columns` of the rows that have an embedding, a bounded batch at a time (rows
        whose text was refused are left out); `read(n)` hears of every n rows read, for
        progress."""
        import pyarrow.compute as pc

        for batch in self.data_batches([*columns, ERROR], batch_size):
            if read is not None:
                read(batch.num_rows)
            kept = batch.filter(pc.is_null(batch.column(ERROR))).select(list(columns))
            if kept.num_rows:
                yield kept

    def count_rows(self) -> tuple[int, int]:
        """(rows written, rows among them whose embedding failed)."""
        import pyarrow.compute as pc

        rows = failed = 0
        for batch in self.data_batches([ERROR], batch_size=65536):
            rows += batch.num_rows
            failed += pc.count(batch.column(0)).as_py()
        return rows, failed


@contextmanager
def load_progress(
    desc: str,
    total: int,
    show_progress: bool | None,
    progress: Callable[[int, int], None] | None,
) -> Iterator[Callable[[int], None]]:
    """One bar (or the caller's `progress(done, total)`) for loading a folder's `total` rows
    into a store; yields the function to call with each number of rows read."""
    done = 0
    show = progress is None and progress_bar_enabled(show_progress, count=total)
    with tqdm(total=total, desc=desc, unit="row", disable=not show) as bar:

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            bar.update(rows)
            if progress is not None:
                progress(done, total)

        yield advance


def chunk_table(chunks: Sequence[Chunk]) -> pa.Table:
    """Chunks as an input table; metadata is JSON, because its keys differ between files."""
    import pyarrow as pa

    return pa.table(
        {
            "id": pa.array([c.id for c in chunks], pa.string()),
            "source": pa.array([c.source for c in chunks], pa.string()),
            "chunk": pa.array([c.index for c in chunks], pa.int64()),
            "text": pa.array([c.text for c in chunks], pa.string()),
            "metadata": pa.array([json.dumps(c.metadata) for c in chunks], pa.string()),
        }
    )
