"""Retrieval with LangChain and cde-small-v2: fit the corpus context once, then index and ask.

python examples/langchain_rag.py [model]   # default: $CDE_RAG_MODEL or jxm/cde-small-v2
"""

from __future__ import annotations

import os
import sys
import tempfile

from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from cde_rag.langchain import CDEEmbeddings

MODEL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CDE_RAG_MODEL", "jxm/cde-small-v2")

TEXTS = {
    "rivers.txt": "The Danube flows through ten countries before reaching the Black Sea.",
    "tides.txt": "Ocean tides are caused mainly by the gravitational pull of the Moon.",
    "bread.txt": "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    "chess.txt": "In chess, castling moves the king two squares towards a rook.",
    "volcano.txt": "Basaltic lava from shield volcanoes is hot and flows easily.",
    "bees.txt": "Honey bees communicate the direction of flowers with a waggle dance.",
}
docs = [Document(page_content=text, metadata={"source": name}) for name, text in TEXTS.items()]

# Fit the corpus context on ALL documents before indexing: vector stores hand texts over in
# slices, so the adapter never fits on its own.
embeddings = CDEEmbeddings(model=MODEL, corpus=docs)
print("context:", embeddings.context)
store = InMemoryVectorStore.from_documents(docs, embeddings)

with tempfile.TemporaryDirectory() as folder:
    # Keep the context with the index; a later process queries with the same one.
    path = embeddings.save_context(os.path.join(folder, "context.safetensors"))
    for_queries = CDEEmbeddings(model=embeddings.model, context=path)  # shares the weights
    assert for_queries.context_fingerprint == embeddings.context_fingerprint

question = "What makes the sea level rise and fall every day?"
for hit in store.as_retriever(search_kwargs={"k": 2}).invoke(question):
    print(f"hit: {hit.metadata['source']}: {hit.page_content}")
