"""Chroma quickstart: a collection that carries its corpus context.

    python examples/chroma_quickstart.py [MODEL] [FOLDER]

MODEL is a hub id or checkpoint folder (default: $CDE_RAG_MODEL or jxm/cde-small-v2); FOLDER is
where the Chroma database goes (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import os
import sys
import tempfile

import chromadb

from cde_rag.chroma import add_documents, create_collection, get_context, open_collection

DOCUMENTS = [
    "The Amazon river carries more water than any other river on Earth.",
    "The Nile flows north through eleven countries into the Mediterranean Sea.",
    "Central banks raise interest rates to slow down inflation.",
    "A mortgage is a loan secured by the property it pays for.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Mitochondria produce most of the energy a cell uses.",
    "The Danube passes through four European capitals.",
    "Bond prices fall when interest rates rise.",
]
QUERY = "Which river flows into the Mediterranean?"


def main(model: str, folder: str) -> None:
    client = chromadb.PersistentClient(
        folder, settings=chromadb.Settings(anonymized_telemetry=False)
    )

    # 1. Create: the context is fitted on the corpus and stored in Chroma, next to the vectors.
    col = create_collection(client, "docs", model=model, corpus=DOCUMENTS)
    print("context:", get_context(col))

    # 2. Add: ids come from the text, so running this again adds nothing twice.
    first = add_documents(col, DOCUMENTS, progress=lambda done, total: print(f"  {done}/{total}"))
    again = add_documents(col, DOCUMENTS)
    print(f"added {first.added}, then added {again.added} and skipped {again.skipped}")

    # 3. Query: queries are embedded as queries, with the same context.
    hits = col.query(query_texts=[QUERY], n_results=3)
    print("top hit:", hits["documents"][0][0])

    # 4. Later, in any process (or against a Chroma server): no corpus needed to reopen.
    reopened = open_collection(client, "docs")
    same = reopened.query(query_texts=[QUERY], n_results=3)
    print("same ranking after reopening:", same["ids"] == hits["ids"])
    plain = client.get_collection("docs")  # works too once cde_rag.chroma is imported
    print(
        "same ranking with get_collection:",
        plain.query(query_texts=[QUERY], n_results=3)["ids"] == hits["ids"],
    )

    # 5. LangChain on the same collection, with the stored context.
    try:
        from langchain_chroma import Chroma

        from cde_rag.langchain import CDEEmbeddings
    except ImportError:
        return
    store = Chroma(
        client=client,
        collection_name="docs",
        embedding_function=CDEEmbeddings.from_chroma(reopened),
        create_collection_if_not_exists=False,
    )
    top = store.similarity_search(QUERY, k=1)[0].page_content
    print("LangChain agrees:", top == hits["documents"][0][0])


if __name__ == "__main__":
    model = (
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CDE_RAG_MODEL", "jxm/cde-small-v2")
    )
    if len(sys.argv) > 2:
        main(model, sys.argv[2])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(model, tmp)
