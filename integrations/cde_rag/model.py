"""`CDEModel`: load cde-small-v2 once, fit corpus contexts, embed documents and queries.

Over 500 lines because it is the engine's one public class: loading, contexts, embedding and
the caches it keys are its methods, while the maths (`modeling`), tokens (`tokenization`),
files (`checkpoint`, `hub`) and contexts (`context`) live in their own modules.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import ModernBertConfig

from .cache import EmbeddingCache
from .checkpoint import ResolvedCheckpoint, resolve_checkpoint
from .context import (
    DEFAULT_SEED,
    CorpusContext,
    StreamedCorpus,
    model_mismatch_message,
    sample_minicorpus,
    sample_positions,
)
from .errors import (
    CheckpointError,
    ContextError,
    ContextMismatchError,
    InputError,
    NotFittedError,
    NumericalError,
)
from .modeling import (
    FIRST_STAGE,
    SECOND_STAGE,
    FirstStage,
    SecondStage,
    backbone_config,
    check_keys,
    load_stage,
)
from .progress import progress_bar_enabled
from .tokenization import DOCUMENT_PREFIX, QUERY_PREFIX, TextEncoder, length_sorted_batches

InputType = Literal["document", "query"]
DTypeLike = str | torch.dtype | None
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
FALLBACK_ALPHABET = "abcdefghijklmnopqrstuvwxyz     "
# Fitted dataset embeddings kept in memory per model (each is N x d float32, 1.5 MB for N=512).
CONTEXT_CACHE_SIZE = 16


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: DTypeLike) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(
            f"Unknown dtype {dtype!r}: use 'float32' (exact, the default) or 'bfloat16' (fast)."
        ) from None


def check_texts(texts: object, what: str = "texts") -> list[str]:
    """Validate caller input early, naming the first bad item."""
    if texts is None:
        raise InputError(f"{what} is None; pass a list of strings.")
    if isinstance(texts, (str, bytes)):
        raise InputError(
            f"{what} must be a list of strings, not one {type(texts).__name__}: wrap it as [text]."
        )
    if not isinstance(texts, Iterable):
        raise InputError(f"{what} must be a list of strings, got {type(texts).__name__}.")
    items = list(texts)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InputError(
                f"{what}[{i}] is {type(item).__name__}, not str. Convert or drop non-text items "
                "before embedding (e.g. LangChain Documents: use doc.page_content)."
            )
        if not item.isascii():
            _check_encodable(item, f"{what}[{i}]")
    return items


def _check_encodable(text: str, label: str) -> None:
    """Refuse text that has no UTF-8 form (a lone UTF-16 surrogate such as "\\ud800", which
    broken JSON escapes or mis-decoded files produce): the tokenizer cannot take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{label} has a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) at character "
            f"{exc.start}, which is not valid Unicode text. Fix the text's decoding, or drop "
            "the character, e.g. text.encode('utf-8', 'replace').decode('utf-8')."
        ) from None


class CDEModel:
    """cde-small-v2 running natively on `transformers.ModernBertModel`, no remote code.

    Use one instance per process and share it: it is thread-safe for embedding, and the
    adapters accept an existing instance.
    """

    def __init__(
        self,
        checkpoint: ResolvedCheckpoint,
        *,
        device: str | torch.device | None = None,
        dtype: DTypeLike = None,
        batch_size: int = 32,
        show_progress: bool | None = None,
        embedding_cache: EmbeddingCache | str | os.PathLike[str] | None = None,
    ):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = resolve_dtype(dtype)
        self.batch_size = _positive(batch_size, "batch_size")
        self.show_progress = show_progress
        self._first_stage_lock = threading.Lock()
        self._context_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._context_cache_lock = threading.Lock()
        self._context_hits = 0
        self._context_misses = 0
        self._embedding_cache: EmbeddingCache | None = None
        self.use_embedding_cache(embedding_cache)
        try:
            base = ModernBertConfig.from_pretrained(str(checkpoint.backbone_dir))
        except Exception as exc:
            raise CheckpointError(
                f"Backbone config in {checkpoint.backbone_dir} is unusable: {exc}"
            ) from exc
        self._first_config = backbone_config(base, self.config.limit_layers_first_stage)
        second_config = backbone_config(base, self.config.limit_layers)
        self.encoder = TextEncoder(checkpoint.backbone_dir, max_length=self.config.max_seq_length)

        second_weights, first_shapes = self._read_weights(SECOND_STAGE)
        second = SecondStage(
            second_config,
            second_weights,
            pool_ignore_contextual_tokens=self.config.pool_ignore_contextual_tokens,
        )
        self.second_stage = load_stage(
            second,
            second_weights,
            SECOND_STAGE,
            device=self.device,
            dtype=self.dtype,
            limit_layers=self.config.limit_layers,
        )
        self._check_first_stage_keys(first_shapes)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] = "jxm/cde-small-v2",
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: DTypeLike = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        batch_size: int = 32,
        show_progress: bool | None = None,
        embedding_cache: EmbeddingCache | str | os.PathLike[str] | None = None,
    ) -> CDEModel:
        """Load from a hub id or a local checkpoint folder (see `cde-spec.md` for the layout)."""
        checkpoint = resolve_checkpoint(
            name_or_path, revision=revision, cache_dir=cache_dir, token=token
        )
        return cls(
            checkpoint,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            show_progress=show_progress,
            embedding_cache=embedding_cache,
        )

    # -- caches ----------------------------------------------------------------------------------

    def use_embedding_cache(
        self, cache: EmbeddingCache | str | os.PathLike[str] | None
    ) -> EmbeddingCache | None:
        """Store every computed embedding in a persistent cache (a SQLite file path or an
        `EmbeddingCache`), so texts embedded before under the same context are not recomputed;
        None turns the cache off. Returns the cache in use."""
        if cache is not None and not isinstance(cache, EmbeddingCache):
            cache = EmbeddingCache(cache)
        self._embedding_cache = cache
        return cache

    @property
    def embedding_cache(self) -> EmbeddingCache | None:
        return self._embedding_cache

    @property
    def cache_stats(self) -> dict[str, int]:
        """Hit and miss counts: contexts (in memory) and embeddings (persistent, if enabled)."""
        cache = self._embedding_cache
        return {
            "context_hits": self._context_hits,
            "context_misses": self._context_misses,
            "embedding_hits": cache.hits if cache is not None else 0,
            "embedding_misses": cache.misses if cache is not None else 0,
        }

    # -- identity ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def revision(self) -> str | None:
        """The hub commit the checkpoint was loaded from (None for a local folder)."""
        return self.checkpoint.revision

    @property
    def backbone_revision(self) -> str | None:
        """The hub commit of the backbone's config and tokenizer (None for a local folder)."""
        return self.checkpoint.backbone_revision

    @property
    def provenance(self) -> dict[str, str | None]:
        """Where this model came from, JSON-friendly: record it wherever vectors are stored."""
        return {
            "model": self.name,
            "revision": self.revision,
            "backbone": self.config.embedder,
            "backbone_revision": self.backbone_revision,
            "fingerprint": self.fingerprint,
        }

    @property
    def corpus_size(self) -> int:
        """N: how many minicorpus documents a context holds (512 for cde-small-v2)."""
        return self.config.corpus_size

    @property
    def dim(self) -> int:
        return self.second_stage.output_projection[2].out_features

    @property
    def max_length(self) -> int:
        return self.config.max_seq_length

    @property
    def fingerprint(self) -> str:
        """Identifies everything that changes the vectors, by content (weights, configs,
        tokenizer files): what a context and stored vectors must agree with."""
        return self.checkpoint.fingerprint

    def matches_fingerprint(self, fingerprint: str | None) -> bool:
        """Whether a recorded model fingerprint names this model: today's, or the one cde-rag's
        context format 1 recorded (it covered the weights, configs and tokenizer.json only)."""
        return fingerprint in (self.fingerprint, self.checkpoint.legacy_fingerprint)

    def __repr__(self) -> str:
        return (
            f"CDEModel({self.name!r}, corpus_size={self.corpus_size}, dim={self.dim}, "
            f"device={self.device}, dtype={_dtype_name(self.dtype)})"
        )

    # -- contexts ------------------------------------------------------------------------------

    def fit_context(
        self,
        corpus: Sequence[str] | StreamedCorpus,
        seed: int = DEFAULT_SEED,
        *,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> CorpusContext:
        """Sample N documents of `corpus` (the spec's rule) and embed them as the context."""
        if isinstance(corpus, StreamedCorpus):
            picks = sample_positions(corpus.length, self.corpus_size, seed)
            minicorpus, source_size = check_texts(corpus.read(picks), "corpus"), corpus.length
        else:
            corpus = check_texts(corpus, "corpus")
            minicorpus = sample_minicorpus(corpus, self.corpus_size, seed)
            source_size = len(corpus)
        embeddings = self._dataset_embeddings(minicorpus, batch_size, show_progress)
        return self._new_context(
            embeddings, "fitted", minicorpus, seed=seed, source_size=source_size
        )

    def context(
        self,
        minicorpus: Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> CorpusContext:
        """A context from exactly N documents, used in the given order."""
        minicorpus = check_texts(minicorpus, "minicorpus")
        if len(minicorpus) != self.corpus_size:
            raise ContextError(
                f"model.context() needs exactly {self.corpus_size} documents (the model's corpus "
                f"size), got {len(minicorpus)}. Use model.fit_context(corpus) to sample them from "
                "a corpus of any size."
            )
        embeddings = self._dataset_embeddings(minicorpus, batch_size, show_progress)
        return self._new_context(embeddings, "explicit", minicorpus)

    def fallback_context(
        self, *, batch_size: int | None = None, show_progress: bool | None = None
    ) -> CorpusContext:
        """The model card's no-corpus fallback: a context of random strings."""
        strings = self.random_strings()
        minicorpus = sample_minicorpus(strings, self.corpus_size, DEFAULT_SEED)
        embeddings = self._dataset_embeddings(minicorpus, batch_size, show_progress)
        return self._new_context(
            embeddings, "fallback", minicorpus, seed=DEFAULT_SEED, source_size=len(strings)
        )

    def context_from_embeddings(self, embeddings: np.ndarray) -> CorpusContext:
        """Wrap first-stage embeddings computed elsewhere (N rows of this model's width)."""
        array = np.asarray(embeddings, dtype=np.float32)
        if array.shape != (self.corpus_size, self.dim):
            raise ContextError(
                f"Dataset embeddings must have shape ({self.corpus_size}, {self.dim}) for this "
                f"model, got {array.shape}."
            )
        return self._new_context(array, "embeddings", None)

    def random_strings(self) -> list[str]:
        """The checkpoint's `random_strings.txt`, or deterministic random strings when the
        checkpoint has none. When whether it has one cannot be known (offline, not cached),
        this is a `CheckpointError`: other strings would make another context silently."""
        if self.checkpoint.random_strings_unknown:
            raise CheckpointError(self.checkpoint.random_strings_unknown)
        path = self.checkpoint.random_strings_path
        if path is not None:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            lines = [line for line in lines if line]
            if lines:
                return lines
        rng = np.random.default_rng(0)
        letters = np.array(list(FALLBACK_ALPHABET))
        return [
            "".join(rng.choice(letters, size=int(rng.integers(32, 256))))
            for _ in range(self.corpus_size)
        ]

    def check_context(self, context: CorpusContext | None) -> CorpusContext:
        """Refuse a missing context, or one made by another model."""
        if context is None:
            raise NotFittedError(
                "No corpus context given. Fit one on your documents (model.fit_context(corpus)), "
                "load a saved one (CorpusContext.load(path)), or opt in to the no-corpus fallback "
                "explicitly (model.fallback_context())."
            )
        if not isinstance(context, CorpusContext):
            raise ContextError(f"context must be a CorpusContext, got {type(context).__name__}.")
        if not self.matches_fingerprint(context.model_fingerprint):
            raise ContextMismatchError(
                model_mismatch_message(
                    context.model_name, context.model_fingerprint, self.name, self.fingerprint
                )
            )
        if context.embeddings.shape != (self.corpus_size, self.dim):
            raise ContextError(
                f"Context has shape {context.embeddings.shape}, this model needs "
                f"({self.corpus_size}, {self.dim})."
            )
        return context

    def _new_context(
        self,
        embeddings: np.ndarray,
        kind: str,
        minicorpus: Sequence[str] | None,
        *,
        seed: int | None = None,
        source_size: int | None = None,
    ) -> CorpusContext:
        return CorpusContext(
            embeddings=embeddings,
            model_name=self.name,
            model_fingerprint=self.fingerprint,
            kind=kind,  # type: ignore[arg-type]
            minicorpus=tuple(minicorpus) if minicorpus is not None else None,
            seed=seed,
            source_size=source_size,
            model_revision=self.revision,
            backbone_revision=self.backbone_revision,
            fit_dtype=None if kind == "embeddings" else _dtype_name(self.dtype),
        )

    # -- embedding -----------------------------------------------------------------------------

    def embed_documents(
        self,
        texts: Sequence[str],
        *,
        context: CorpusContext | None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """L2-normalised float32 (n, dim) embeddings of documents, in input order."""
        return self.embed(
            texts,
            context=context,
            input_type="document",
            batch_size=batch_size,
            show_progress=show_progress,
        )

    def embed_queries(
        self,
        texts: Sequence[str],
        *,
        context: CorpusContext | None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """L2-normalised float32 (n, dim) embeddings of queries, in input order."""
        return self.embed(
            texts,
            context=context,
            input_type="query",
            batch_size=batch_size,
            show_progress=show_progress,
        )

    def embed(
        self,
        texts: Sequence[str],
        *,
        context: CorpusContext | None,
        input_type: InputType = "document",
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """L2-normalised float32 (n, dim) embeddings in input order; with an embedding cache
        on, only texts not seen before under this context (and dtype) are computed."""
        texts = check_texts(texts)
        context = self.check_context(context)
        prefix = _prefix(input_type)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        cache = self._embedding_cache
        keys: list[bytes] = []
        found: dict[bytes, np.ndarray] = {}
        if cache is not None:
            # The checksum, not the fingerprint: the exact numbers decide the vectors.
            namespace = f"{context.checksum}/{_dtype_name(self.dtype)}"
            keys = [cache.key(namespace, input_type, text) for text in texts]
            found = cache.get_many(keys, self.dim)
        # Each distinct text not in the cache is computed once, even if repeated in `texts`.
        todo: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if keys and keys[i] in found:
                out[i] = found[keys[i]]
            else:
                todo.setdefault(text, []).append(i)
        if not todo:
            return out
        unique = list(todo)
        vectors = self._second_stage_embeddings(
            self.encoder.encode(unique, prefix),
            context,
            batch_size,
            show_progress,
            f"Embedding {input_type}s",
        )
        self._refuse_bad_vectors(vectors, lambda i: f"texts[{todo[unique[i]][0]}]", unit=True)
        for text, vector in zip(unique, vectors, strict=True):
            out[todo[text]] = vector
        if cache is not None:
            cache.put_many(
                (keys[todo[text][0]], vector) for text, vector in zip(unique, vectors, strict=True)
            )
        return out

    def _second_stage_embeddings(
        self,
        token_ids: list[list[int]],
        context: CorpusContext,
        batch_size: int | None,
        show_progress: bool | None,
        desc: str,
    ) -> np.ndarray:
        out = np.zeros((len(token_ids), self.dim), dtype=np.float32)
        stage = self.second_stage
        prefix_rows = torch.tensor(context.embeddings, device=self.device, dtype=torch.float32)
        with torch.inference_mode():
            ctx_prefix = stage.prefix(prefix_rows)
            for batch in self._batches(token_ids, batch_size, show_progress, desc):
                starts = [self._pool_start(token_ids[i]) for i in batch.indices]
                ids = batch.input_ids.to(self.device)
                vectors = stage(ids, batch.lengths, ctx_prefix, starts)
                out[batch.indices] = vectors.float().cpu().numpy()
        return out

    def count_tokens(self, texts: Sequence[str], input_type: InputType = "document") -> list[int]:
        """Tokens each text takes after prefixing and truncation, special tokens included."""
        return self.encoder.count_tokens(check_texts(texts), _prefix(input_type))

    def _pool_start(self, ids: Sequence[int]) -> int:
        """The first pooled position: 0, or with `pool_ignore_instruction_tokens` the position
        after the first colon past position 0 (the prefix words are left out)."""
        colon = self.encoder.colon_id
        if self.config.pool_ignore_instruction_tokens and colon is not None:
            for position in range(1, len(ids)):
                if ids[position] == colon:
                    return position + 1
        return 0

    # -- first stage ---------------------------------------------------------------------------

    def _dataset_embeddings(
        self, minicorpus: Sequence[str], batch_size: int | None, show_progress: bool | None
    ) -> np.ndarray:
        """First-stage embeddings of `minicorpus`, from the in-memory context cache when these
        exact texts were embedded before by this model with the same batch size (batching
        changes the last bits, and a context's checksum is byte-exact)."""
        size = _positive(self.batch_size if batch_size is None else batch_size, "batch_size")
        digest = hashlib.sha256(f"batch={size}\n".encode())
        for text in minicorpus:
            digest.update(f"{len(text)}:".encode())
            digest.update(text.encode("utf-8", "surrogatepass"))
        key = digest.hexdigest()
        cached = self._cached_context(key)
        if cached is not None:
            return cached
        # The first stage is needed only while fitting; load it for the fit and let it go after.
        with self._first_stage_lock:
            cached = self._cached_context(key, count_miss=True)  # another thread may have fit it
            if cached is not None:
                return cached
            out = self._first_stage_embeddings(minicorpus, batch_size, show_progress)
            with self._context_cache_lock:
                self._context_cache[key] = out
                while len(self._context_cache) > CONTEXT_CACHE_SIZE:
                    self._context_cache.popitem(last=False)
        return out.copy()

    def _cached_context(self, key: str, count_miss: bool = False) -> np.ndarray | None:
        with self._context_cache_lock:
            found = self._context_cache.get(key)
            if found is not None:
                self._context_cache.move_to_end(key)
                self._context_hits += 1
                return found.copy()
            if count_miss:
                self._context_misses += 1
            return None

    def _first_stage_embeddings(
        self, minicorpus: Sequence[str], batch_size: int | None, show_progress: bool | None
    ) -> np.ndarray:
        """The first stage runs once per distinct text: a corpus smaller than N is sampled with
        replacement, so a few dozen chunks would otherwise be embedded N times over."""
        slot_of: dict[str, int] = {}
        slots = [slot_of.setdefault(text, len(slot_of)) for text in minicorpus]
        distinct = list(slot_of)
        token_ids = self.encoder.encode(distinct, DOCUMENT_PREFIX)
        out = np.zeros((len(distinct), self.second_stage.backbone.config.hidden_size), np.float32)
        stage = self._load_first_stage()
        try:
            with torch.inference_mode():
                for batch in self._batches(token_ids, batch_size, show_progress, "Fitting context"):
                    vectors = stage(batch.input_ids.to(self.device), batch.lengths)
                    out[batch.indices] = vectors.float().cpu().numpy()
        finally:
            del stage
            _release_memory()
        first_use = {slot: i for i, slot in reversed(list(enumerate(slots)))}
        self._refuse_bad_vectors(out, lambda k: f"minicorpus[{first_use[k]}]", unit=False)
        return out[slots]

    def _refuse_bad_vectors(
        self, vectors: np.ndarray, label: Callable[[int], str], *, unit: bool
    ) -> None:
        """Refuse NaN, infinite or (for `unit` embeddings) unnormalisable rows: they would break
        search and JSON downstream, so an overflow inside the model is an error, never output."""
        with np.errstate(all="ignore"):
            ok = np.isfinite(vectors).all(axis=1)
            if unit:
                ok &= np.abs(np.linalg.norm(vectors, axis=1) - 1) < 1e-3
        if ok.all():
            return
        bad = np.flatnonzero(~ok)
        dtype = _dtype_name(self.dtype)
        if self.dtype != torch.float32:
            cause = (
                f"It computes in {dtype}, whose range or precision overflowed: load the model "
                "with dtype='float32'. If that fails too, the checkpoint is damaged."
            )
        else:
            cause = (
                "Its float32 computation overflowed, which a trained cde-small-v2 never does: the "
                "checkpoint's weights are damaged (finite but absurd values). Download it again, "
                "or compare model.fingerprint with a known-good copy."
            )
        raise NumericalError(
            f"The model computed NaN, infinite or zero vectors for {label(int(bad[0]))} "
            f"({len(bad)} of {len(vectors)}) and refused to return them. {cause}"
        )

    def _read_weights(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The tensors under `prefix`, and shape-only (meta) stand-ins for every other key."""
        path = self.checkpoint.weights_path
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as fh:
                    tensors = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}  # noqa: SIM118
                    others = {
                        k: torch.empty(fh.get_slice(k).get_shape(), device="meta")
                        for k in fh.keys()  # noqa: SIM118
                        if not k.startswith(prefix)
                    }
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
                tensors = {k: v for k, v in state.items() if k.startswith(prefix)}
                others = {k: v.to("meta") for k, v in state.items() if not k.startswith(prefix)}
        except Exception as exc:
            raise CheckpointError(f"Could not read weights {path}: {exc}") from exc
        return tensors, others

    def _check_first_stage_keys(self, shapes: dict[str, torch.Tensor]) -> None:
        """Fail at load time, not at the first fit, when the first stage's weights are wrong."""
        stray = sorted(k for k in shapes if not k.startswith(FIRST_STAGE))
        if stray:
            raise CheckpointError(
                f"Unexpected weights {stray[:5]}: keys must start with first_stage_model. or "
                "second_stage_model. as in cde-small-v2."
            )
        module = FirstStage(self._first_config, shapes)
        check_keys(module, shapes, FIRST_STAGE, self.config.limit_layers_first_stage)

    def _load_first_stage(self) -> FirstStage:
        weights, _ = self._read_weights(FIRST_STAGE)
        module = FirstStage(self._first_config, weights)
        return load_stage(
            module,
            weights,
            FIRST_STAGE,
            device=self.device,
            dtype=self.dtype,
            limit_layers=self.config.limit_layers_first_stage,
        )

    def _batches(
        self,
        token_ids: list[list[int]],
        batch_size: int | None,
        show_progress: bool | None,
        desc: str,
    ):
        size = _positive(self.batch_size if batch_size is None else batch_size, "batch_size")
        batches = length_sorted_batches(token_ids, size)
        if not progress_bar_enabled(show_progress, self.show_progress, count=len(token_ids)):
            return batches  # no bar object at all: a single query should not pay for one
        total = -(-len(token_ids) // size)
        return tqdm(batches, total=total, desc=desc, unit="batch")


def _release_memory() -> None:
    """Hand freed memory back to the OS: glibc keeps large freed blocks mapped otherwise, and
    the released first stage (0.6 GB for cde-small-v2 in fp32) would still count as resident."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _prefix(input_type: str) -> str:
    if input_type == "document":
        return DOCUMENT_PREFIX
    if input_type == "query":
        return QUERY_PREFIX
    raise ValueError(f"input_type must be 'document' or 'query', got {input_type!r}.")


def _positive(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


_SHARED: dict[tuple, CDEModel] = {}
_SHARED_LOCK = threading.Lock()


def shared_model(
    name_or_path: str | os.PathLike[str] = "jxm/cde-small-v2",
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: DTypeLike = None,
) -> CDEModel:
    """One model per (checkpoint, revision, device, dtype) in this process.

    Adapters, Chroma embedding functions and servers are created often (Chroma rebuilds its
    embedding function on every collection operation); they all share the weights this way.
    """
    key = (
        os.fspath(name_or_path),
        revision,
        str(torch.device(device) if device is not None else default_device()),
        resolve_dtype(dtype),
    )
    with _SHARED_LOCK:
        model = _SHARED.get(key)
        if model is None:
            model = CDEModel.from_pretrained(
                name_or_path, revision=revision, device=device, dtype=dtype
            )
            _SHARED[key] = model
        return model
