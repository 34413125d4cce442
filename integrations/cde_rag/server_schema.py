"""The HTTP contract of `cde-rag serve`: request and response bodies, how requests are checked,
and the OpenAPI document built from them.

The OpenAPI document is part of the contract: generated clients and API fuzzers trust it, so it
lists every status and body the server really sends, and types `input` and `documents` with
the limits the server enforces. Request fields that the server checks itself (to name the bad
item in OpenAI's words) are `Any` at runtime and carry their JSON schema explicitly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from .context import DEFAULT_SEED
from .server_limits import MAX_INPUTS

# A text the model can read: at least one character that is not whitespace.
_TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}


def _texts_schema(description: str, max_items: int | None) -> dict[str, Any]:
    array: dict[str, Any] = {"type": "array", "items": _TEXT, "minItems": 1}
    if max_items is not None:
        array["maxItems"] = max_items
    return {"description": description, "anyOf": [_TEXT, array]}


INPUT_DESCRIPTION = (
    "The texts to embed: a string, or a list of strings. Each must have a character that is not "
    "whitespace; each is cut to the model's 512 tokens. Per request: at most --max-inputs "
    "texts (2048), --max-tokens tokens after cutting (300000), --max-body-mb of JSON (16)."
)


# -- checking requests -------------------------------------------------------------------------


def lone_surrogate(value: Any, where: str | None = None) -> tuple[str, str | None] | None:
    """(message, param) for the first string, or object key, that has no UTF-8 form.

    JSON lets a client escape half a UTF-16 pair ("\\ud800"); Python decodes it into a lone
    surrogate that the tokenizer (and any UTF-8 writer) cannot take.
    """
    if isinstance(value, str):
        position = _surrogate_at(value)
        if position is None:
            return None
        return f"'{where}' {_surrogate_message(value, position)}", where
    if isinstance(value, dict):
        for key, item in value.items():
            position = _surrogate_at(key)
            if position is not None:
                inside = f"'{where}'" if where else "the request body"
                return f"A key of {inside} {_surrogate_message(key, position)}", where
            found = lone_surrogate(item, f"{where}.{key}" if where else key)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = lone_surrogate(item, f"{where}[{i}]")
            if found:
                return found
    return None


def _surrogate_at(text: str) -> int | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _surrogate_message(text: str, position: int) -> str:
    return (
        f"has a lone UTF-16 surrogate (\\u{ord(text[position]):04x} at character {position}), "
        "which is not Unicode text: a JSON escape from \\ud800 to \\udfff must be half of a "
        "high-low pair. Fix how the client encodes the text, or drop that character."
    )


class RequestBody(BaseModel):
    """A JSON object with known fields only (a misspelled option is an error, not ignored),
    whose strings and keys are all valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        found = lone_surrogate(data)
        if found:
            message, param = found
            raise PydanticCustomError(
                "invalid_text", "{message}", {"message": message, "param": param}
            )
        return data


class TextsError(ValueError):
    """`input` or `documents` is not a usable list of texts; `code` is OpenAI-style."""

    def __init__(self, message: str, param: str, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


def check_texts_field(value: Any, param: str = "input", max_items: int | None = None) -> list[str]:
    """A JSON string or list of strings that each have some non-whitespace character, or a
    `TextsError` naming the first bad item.

    Empty and whitespace-only texts are refused: their vector is only the prefix's and would
    match arbitrary queries, and an HTTP caller can drop them before sending (the framework
    adapters, which must return one vector per text, embed them with an EmptyTextWarning).
    """
    single = isinstance(value, str)

    def label(i: int) -> str:
        return param if single else f"{param}[{i}]"

    if single:
        value = [value]
    if not isinstance(value, list):
        raise TextsError(
            f"'{param}' must be a string or a list of strings, not {_json_type(value)}.", param
        )
    if not value:
        raise TextsError(f"'{param}' is empty: send at least one string.", param)
    if max_items is not None and len(value) > max_items:
        raise TextsError(
            f"'{param}' has {len(value)} items; at most {max_items} are allowed per request. "
            "Split the list into several requests.",
            param,
            "too_many_inputs",
        )
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value) or any(
        isinstance(item, list) for item in value
    ):
        raise TextsError(
            "Token arrays are not supported: cde-small-v2 has its own tokenizer. Send the texts "
            "as strings (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)).",
            param,
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise TextsError(f"{label(i)} is {_json_type(item)}, not a string.", label(i))
        if not item:
            raise TextsError(
                f"{label(i)} is an empty string; drop empty texts before sending them.", label(i)
            )
        if item.isspace():
            raise TextsError(
                f"{label(i)} is whitespace only; drop empty texts before sending them.", label(i)
            )
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), "a list")


# -- request bodies ----------------------------------------------------------------------------


class EmbeddingRequest(RequestBody):
    """OpenAI's embeddings request, plus `input_type` and `context`."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "cde-small-v2", "input": ["hello world"]}]}
    )

    input: Annotated[Any, WithJsonSchema(_texts_schema(INPUT_DESCRIPTION, MAX_INPUTS))]
    model: str = Field(description="'cde-small-v2', or an alias listed by GET /v1/models.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="The model's width, or omitted.")
    user: str | None = None
    input_type: Literal["document", "query"] = "document"
    context: str | None = Field(
        None, description="A stored context id (case-insensitive); omitted: the default."
    )


class ContextRequest(RequestBody):
    """Fit a context from `documents`, or wrap first-stage `embeddings` (N x dim)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"documents": ["first doc", "second doc"], "seed": 1}]}
    )

    id: str | None = Field(
        None,
        description="1-64 letters, digits, '-' or '_' (case-insensitive, stored lower-case); "
        "omitted: 'ctx-' and 16 characters of the context's checksum.",
    )
    documents: Annotated[
        Any, WithJsonSchema(_texts_schema("Texts to fit the context on (N are sampled).", None))
    ] = None
    seed: int = Field(DEFAULT_SEED, ge=0)
    embeddings: list[list[float]] | None = None


class DriftRequest(RequestBody):
    """Documents as they are now, to score against a stored context (`cde_rag.drift`)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"documents": ["first doc", "second doc"]}]}
    )

    documents: Annotated[
        Any,
        WithJsonSchema(
            _texts_schema(
                "Your documents now, or a sample of them (the first stage runs on each: the "
                "same limits as 'input' of /v1/embeddings).",
                MAX_INPUTS,
            )
        ),
    ]
    population: int | None = Field(
        None,
        ge=1,
        description="How many documents the sample was drawn from (without replacement), "
        "so its sampling noise is taken out; at least the number sent. Omitted: the documents "
        "sent are the whole corpus.",
    )


# -- response bodies ---------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, for every 4xx and 5xx."""

    error: ErrorDetail


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="floats, or base64 of little-endian float32 (encoding_format)"
    )


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


_FINGERPRINT = "The recipe: the model and the minicorpus texts in order (or the given numbers)."
_CHECKSUM = (
    "The exact numbers: two fits of one recipe (say float32 and bfloat16) share a fingerprint "
    "but not a checksum. Record it with stored vectors."
)


class ContextRef(BaseModel):
    id: str
    fingerprint: str = Field(description=_FINGERPRINT)
    checksum: str = Field(description=_CHECKSUM)
    kind: str


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage
    context: ContextRef
    input_type: Literal["document", "query"]


class ContextInfo(BaseModel):
    object: Literal["context"]
    id: str
    usable: Literal[True]
    fingerprint: str = Field(description=_FINGERPRINT)
    checksum: str = Field(description=_CHECKSUM)
    kind: str
    model: str
    model_fingerprint: str
    model_revision: str | None = Field(description="Hub commit of the model; null: a folder.")
    backbone_revision: str | None = Field(description="Hub commit of the backbone's files.")
    size: int
    dim: int
    seed: int | None
    source_size: int | None
    fit_dtype: str | None = Field(description="The dtype the context was fitted in.")
    unique_documents: int | None
    sample: list[str]
    created_at: str


class UnusableContext(BaseModel):
    object: Literal["context"]
    id: str
    usable: Literal[False]
    error: str


class ContextList(BaseModel):
    object: Literal["list"]
    data: list[ContextInfo | UnusableContext]


class ContextDeleted(BaseModel):
    object: Literal["context.deleted"]
    id: str
    deleted: bool


class DriftReport(BaseModel):
    object: Literal["context.drift"]
    id: str
    fingerprint: str = Field(description=_FINGERPRINT)
    drift: float = Field(
        description="How far the documents' mean first-stage embedding lies from the "
        "context's, sampling noise taken out, in units of the context's spread: about 0 for "
        "the documents the context was fitted on (see the README)."
    )
    sampled: int = Field(description="Documents scored.")
    population: int = Field(description="Documents they were drawn from.")
    threshold: float = Field(description="Above it a re-fit is recommended (a heuristic).")
    refit_recommended: bool
    advice: str


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    aliases: list[str]
    fingerprint: str
    revision: str | None = Field(description="The hub commit loaded; null: a local folder.")
    backbone_revision: str | None = Field(description="The backbone's hub commit.")
    dimensions: int
    corpus_size: int
    max_input_tokens: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]
    model: str


class Stats(BaseModel):
    object: Literal["stats"]
    requests: int
    texts: int
    model_calls: int
    largest_call_requests: int
    failed_requests: int
    rerun_batches: int


# -- the OpenAPI document ----------------------------------------------------------------------

ERROR_DESCRIPTIONS = {
    400: "Bad request: invalid JSON or field, a text that is not valid Unicode, empty or "
    "whitespace-only texts, over --max-inputs or --max-tokens, invalid or unusable context id, "
    "or a Host header this server does not answer (code host_not_allowed).",
    401: "Missing or wrong API key (only when the server has one).",
    404: "Unknown model, context, or route.",
    409: "The context id is taken by another context.",
    413: "The request body is over --max-body-mb.",
    500: "The server failed on this request (it keeps serving others).",
    507: "No space left where contexts are stored; nothing was stored.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these error statuses, plus those every route can send."""
    every = {400, 401, 500}
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        for status in sorted(every | set(statuses))
    }


def finish_openapi(
    document: dict[str, Any],
    *,
    max_inputs: int,
    corpus_size: int,
    dim: int,
    api_key: bool,
    open_paths: set[str],
) -> dict[str, Any]:
    """The server's own limits, model shape and auth in the generated document; no 422
    (never sent: validation errors are 400s in OpenAI's shape)."""
    schemas = document["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for request, field in (("EmbeddingRequest", "input"), ("DriftRequest", "documents")):
        schemas[request]["properties"][field]["anyOf"][1]["maxItems"] = max_inputs
    context_request = schemas["ContextRequest"]
    context_request["oneOf"] = [{"required": ["documents"]}, {"required": ["embeddings"]}]
    context_request["properties"]["embeddings"] = {
        "description": f"{corpus_size} first-stage vectors of {dim} numbers (this model's "
        "shape), each of norm at most 1e4, instead of documents.",
        "type": "array",
        "minItems": corpus_size,
        "maxItems": corpus_size,
        "items": {"type": "array", "minItems": dim, "maxItems": dim, "items": {"type": "number"}},
    }
    if api_key:
        document["components"]["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "--api-key"}
        }
    for path, operations in document["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            if api_key and path not in open_paths:
                operation["security"] = [{"apiKey": []}]
            else:
                operation["responses"].pop("401", None)
    return document
