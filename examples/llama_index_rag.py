"""Retrieval with LlamaIndex and cde-small-v2: the pipeline fits the context on every chunk.

python examples/llama_index_rag.py [model]   # default: $CDE_RAG_MODEL or jxm/cde-small-v2
"""

from __future__ import annotations

import os
import sys
import tempfile

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter

from cde_rag.llama_index import CDEContextFit, CDEEmbedding

MODEL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CDE_RAG_MODEL", "jxm/cde-small-v2")

TEXTS = {
    "rivers.txt": "The Danube flows through ten countries before reaching the Black Sea.",
    "tides.txt": "Ocean tides are caused mainly by the gravitational pull of the Moon.",
    "bread.txt": "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    "chess.txt": "In chess, castling moves the king two squares towards a rook.",
    "volcano.txt": "Basaltic lava from shield volcanoes is hot and flows easily.",
    "bees.txt": "Honey bees communicate the direction of flowers with a waggle dance.",
}
documents = [Document(text=text, metadata={"source": name}) for name, text in TEXTS.items()]

embed_model = CDEEmbedding(model_name=MODEL)
with tempfile.TemporaryDirectory() as folder:
    # CDEContextFit fits the context on all chunks before they are embedded, and saves it
    # where a later process (or a cache hit) restores it from.
    fit = CDEContextFit(embed_model, context_path=os.path.join(folder, "context.safetensors"))
    index = VectorStoreIndex.from_documents(
        documents, embed_model=embed_model, transformations=[SentenceSplitter(), fit]
    )
print("context:", embed_model.context)

question = "What makes the sea level rise and fall every day?"
for hit in index.as_retriever(similarity_top_k=2).retrieve(question):
    print(f"hit: {hit.node.metadata['source']}: {hit.node.get_content()}")
