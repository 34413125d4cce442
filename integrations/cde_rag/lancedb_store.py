"""LanceDB as the store for corpora beyond one Chroma node: load an embeddings folder, search it.

LanceDB is serverless: a table lives on local disk or object storage (`s3://...`) and any
number of processes read it. A CDE vector only makes sense with the context it was embedded
with, so the context is stored beside the table, in the companion table `NAME-cde-context`
(one row: the context file's bytes, its fingerprint, the model), and the table's schema
records the same fingerprint. Loading checks both before writing, and a search embeds the
query with that context, refusing a model that did not make it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import CorpusContext
from .embeddings_folder import EMBEDDING, INPUT_COLUMNS, EmbeddingsFolder, load_progress
from .errors import ContextError, ContextMismatchError
from .ingest import Hit, check_query

if TYPE_CHECKING:
    import pyarrow as pa
    from lancedb.db import DBConnection
    from lancedb.table import Table

    from .model import CDEModel, DTypeLike

CONTEXT_SUFFIX = "-cde-context"
CONTEXT_KEY = b"cde_rag.context"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class LoadReport:
    """What a load did: `added` rows are new, `rows` are in the table now; `failed` rows of
    the folder had no embedding (their text was refused when embedding) and were left out."""

    table: str
    uri: str
    rows: int
    added: int
    failed: int
    context: str
    new_table: bool

    def summary(self) -> str:
        return (
            f"Loaded into LanceDB table {self.table!r} at {self.uri}: {self.added} rows added, "
            f"{self.rows} in the table, {self.failed} without an embedding left out; context "
            f"{self.context[:12]}."
        )


@dataclass(frozen=True)
class LanceStore:
    """An opened table with the context its vectors were embedded with."""

    table: Table
    context: CorpusContext
    model: str
    revision: str | None


def check_table_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(CONTEXT_SUFFIX):
        raise ValueError(
            f"Invalid LanceDB table name {name!r}: use letters, digits, '_', '-' and '.', "
            f"not ending in {CONTEXT_SUFFIX!r} (that name holds a table's context)."
        )
    return name


def load_embeddings(
    path: str | os.PathLike[str],
    uri: str | os.PathLike[str],
    table: str,
    *,
    batch_size: int = 4096,
    show_progress: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LoadReport:
    """Load a finished embeddings folder (`cde_rag.ray.index_folder`) into a LanceDB table.

    Idempotent: rows are merged on `id` (content ids), so loading twice, or loading a
    re-run's output over an earlier one, adds only rows the table lacks. A table holding
    another context is refused before anything is written. The rows stream through one
    merge, a bounded batch at a time. `progress(done, total)` follows the rows read.
    """
    import lancedb

    check_table_name(table)
    folder = EmbeddingsFolder(path)
    manifest, context = folder.finished()
    db = lancedb.connect(os.fspath(uri))
    _store_context(db, table, context, manifest)
    new_table = not _exists(db, table)
    # exist_ok: another loader may create it meanwhile; its context was checked just above.
    store = db.create_table(table, schema=_schema(context), exist_ok=True)
    _check_table_context(store, table, context)
    total = int(manifest.get("rows") or 0)
    with load_progress("Loading into LanceDB", total, show_progress, progress) as advance:
        rows = _rows(folder, _schema(context), batch_size, advance)
        result = store.merge_insert("id").when_not_matched_insert_all().execute(rows)
    return LoadReport(
        table=table,
        uri=os.fspath(uri),
        rows=store.count_rows(),
        added=int(result.num_inserted_rows),
        failed=int(manifest.get("failed") or 0),
        context=context.fingerprint,
        new_table=new_table,
    )


def open_store(uri: str | os.PathLike[str], table: str) -> LanceStore:
    """The table and its stored context, checked against each other."""
    import lancedb

    check_table_name(table)
    db = lancedb.connect(os.fspath(uri))
    if not _exists(db, table):
        raise ValueError(
            f"No LanceDB table {table!r} at {os.fspath(uri)}; load one first "
            f"(cde-rag load PATH --lancedb {os.fspath(uri)} --collection {table})."
        )
    record = _read_context(db, table)
    if record is None:
        raise ContextError(
            f"LanceDB table {table!r} has no stored context ({table}{CONTEXT_SUFFIX} is "
            "missing), so its vectors cannot be queried safely. Load it again with cde-rag load."
        )
    context, model, revision = record
    store = db.open_table(table)
    _check_table_context(store, table, context)
    return LanceStore(table=store, context=context, model=model, revision=revision)


def search(
    uri: str | os.PathLike[str],
    table: str,
    query: str,
    *,
    k: int = 5,
    source: str | None = None,
    model: str | os.PathLike[str] | CDEModel | None = None,
    revision: str | None = None,
    device: str | None = None,
    dtype: DTypeLike = None,
) -> list[Hit]:
    """The `k` chunks nearest to `query`, best first, the query embedded with the stored
    context. `model` defaults to the one recorded with the table (pass it where that path
    or id does not resolve); any model other than the context's own is refused.
    `source` keeps only chunks of that file."""
    from .model import CDEModel, shared_model

    check_query(query, k)
    store = open_store(uri, table)
    if not isinstance(model, CDEModel):
        model = shared_model(
            model or store.model, revision=revision or store.revision, device=device, dtype=dtype
        )
    vector = model.embed_queries([query], context=store.context)[0]
    search = store.table.search(vector, vector_column_name=EMBEDDING).metric("cosine").limit(k)
    if source is not None:
        search = search.where(f"source = {_sql_string(source)}", prefilter=True)
    found = search.select(list(INPUT_COLUMNS)).to_list()
    return [
        Hit(
            rank=rank,
            id=row["id"],
            text=row["text"],
            source=row["source"],
            chunk=int(row["chunk"]),
            score=1.0 - float(row["_distance"]),
            metadata=json.loads(row["metadata"] or "{}"),
        )
        for rank, row in enumerate(found, 1)
    ]


# -- the context beside the table --------------------------------------------------------------


def _store_context(
    db: DBConnection, table: str, context: CorpusContext, manifest: dict[str, Any]
) -> None:
    """Write the companion first (a table is never without its context), or check it."""
    import pyarrow as pa

    record = _read_context(db, table)
    if record is None:
        row = pa.table(
            {
                "table": [table],
                "fingerprint": [context.fingerprint],
                "model": [manifest.get("model") or context.model_name],
                "revision": pa.array([manifest.get("revision")], pa.string()),
                "context": pa.array([context.to_bytes()], pa.binary()),
            }
        )
        # exist_ok=False: of two loaders racing here, the second fails and runs again.
        db.create_table(table + CONTEXT_SUFFIX, data=row)
        return
    stored = record[0]
    if stored != context:
        raise ContextMismatchError(
            f"LanceDB table {table!r} holds vectors embedded with context "
            f"{stored.fingerprint[:12]}, but this folder was embedded with "
            f"{context.fingerprint[:12]}; mixing them would make search results meaningless. "
            "Load it into a new table, or re-embed it with the table's context "
            f"(its file: cde_rag.lancedb_store.open_store(uri, {table!r}).context)."
        )


def _read_context(db: DBConnection, table: str) -> tuple[CorpusContext, str, str | None] | None:
    name = table + CONTEXT_SUFFIX
    if not _exists(db, name):
        return None
    rows = db.open_table(name).to_arrow().to_pylist()
    if len(rows) != 1 or rows[0].get("table") != table:
        raise ContextError(
            f"The context table {name!r} was altered (it must hold one row for {table!r}). "
            "Delete both tables and load the embeddings folder again."
        )
    row = rows[0]
    context = CorpusContext.from_bytes(row["context"], source=f"LanceDB table {name!r}")
    if context.fingerprint != row["fingerprint"]:
        raise ContextError(
            f"The context stored in {name!r} does not match its recorded fingerprint; it was "
            "altered. Delete both tables and load the embeddings folder again."
        )
    return context, row["model"], row["revision"]


def _check_table_context(store: Table, table: str, context: CorpusContext) -> None:
    recorded = (store.schema.metadata or {}).get(CONTEXT_KEY, b"").decode()
    if recorded != context.fingerprint:
        raise ContextMismatchError(
            f"LanceDB table {table!r} records context {recorded[:12] or '(none)'}, but its "
            f"stored context is {context.fingerprint[:12]}: it was not created by cde-rag, or "
            "was changed since. Load the embeddings into a new table."
        )


def _schema(context: CorpusContext) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("chunk", pa.int64()),
            ("text", pa.string()),
            ("metadata", pa.string()),
            (EMBEDDING, pa.list_(pa.float32(), context.dim)),
        ],
        metadata={CONTEXT_KEY: context.fingerprint.encode()},
    )


def _rows(
    folder: EmbeddingsFolder, schema: pa.Schema, batch_size: int, read: Callable[[int], None]
) -> pa.RecordBatchReader:
    """The folder's embedded rows as one stream, cast to the table's schema."""
    import pyarrow as pa

    batches = folder.embedded_batches(schema.names, batch_size, read)
    return pa.RecordBatchReader.from_batches(schema, (b.cast(schema) for b in batches))


def _exists(db: DBConnection, name: str) -> bool:
    token = None
    while True:
        page = db.list_tables(page_token=token)
        if name in page.tables:
            return True
        token = page.page_token
        if not token:
            return False


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
