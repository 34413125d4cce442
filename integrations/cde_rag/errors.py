"""Exceptions raised by cde-rag.

Every error says what went wrong *and* what to do about it, because most of them are hit by
someone wiring a RAG pipeline together, not by someone reading our source.
"""

from __future__ import annotations


class CDEError(Exception):
    """Base class for every error cde-rag raises on purpose."""


class CheckpointError(CDEError, ValueError):
    """A checkpoint is missing, unreadable, or has a layout the engine does not support."""


class UnsupportedTransformersError(CheckpointError):
    """The installed transformers lacks a ModernBERT internal the engine relies on."""


class ContextError(CDEError, ValueError):
    """A corpus context is missing, malformed, or belongs to another model."""


class ContextMismatchError(ContextError):
    """Two different corpus contexts would be mixed (e.g. stored vectors vs. new queries)."""


class NotFittedError(ContextError):
    """An embedding was requested before any corpus context was set."""


class InputError(CDEError, TypeError):
    """Texts handed to the engine are not a list of strings."""


class NumericalError(CDEError, ArithmeticError):
    """The model computed NaN or infinite values; the engine refuses to return them."""


class DocumentError(CDEError, ValueError):
    """A file cannot be turned into text (binary, empty, encrypted, too large, unreadable)."""


class StorageFullError(CDEError, OSError):
    """The disk holding a store or a cache ran out of space."""
