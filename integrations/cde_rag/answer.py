"""Turn retrieved chunks into an answer that cites them as [1], [2], ...

Two answer builders share one numbering (`Source.number`), so the citations in the chat always
match the sources panel:

* `extractive_answer` needs no LLM: it quotes the best sentences of the retrieved chunks.
* `llm_answer` asks an OpenAI-compatible chat endpoint to answer from the numbered chunks.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import CDEError

DEFAULT_MAX_SENTENCES = 3
# A "sentence" longer than this (a chunk without punctuation) is cut, so answers stay readable.
MAX_SENTENCE_CHARS = 320
ENV_BASE_URL = "CDE_RAG_LLM_BASE_URL"
ENV_MODEL = "CDE_RAG_LLM_MODEL"
ENV_API_KEY = "CDE_RAG_LLM_API_KEY"

# A possible sentence end: . ! ? or … (optionally followed by a closing quote or bracket),
# whitespace, then the next word's first character (group 1); see `_split_segment`.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s+(\S))")
# Text that ends a sentence, and characters that may open one besides letters and digits.
_FINAL = re.compile(r"[.!?…:;][\"'”’)\]]*$")
_OPENERS = "\"'“‘([¿¡#*-+•>|"
# An unpunctuated line this short that does not end on a stopword reads as a title.
_TITLE_WORDS = 12
# Abbreviations that a capitalised word or a number usually follows ("St. Helens", "No. 5").
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof st mt ft sen rep gov gen col lt sgt capt rev hon jr sr no nos vol fig
    figs eq pp ch sec art dept est jan feb mar apr jun jul aug sep sept oct nov dec
    """.split()  # noqa: SIM905
)
# Lines that stand alone even without final punctuation: Markdown headings, list items, quotes.
_BLOCK_LINE = re.compile(r"(?:#{1,6}\s|[-*+•>]\s|\d{1,3}[.)]\s)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CITATION = re.compile(r"\[(\d+)\]")
# Words that carry no meaning for matching a sentence to a question.
_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself
    just me more most my no nor not now of off on once only or other our ours out over own
    same she should so some such than that the their theirs them then there these they this
    those through to too under until up very was we were what when where which while who whom
    why will with would you your yours
    """.split()  # noqa: SIM905
)


class AnswerError(CDEError, RuntimeError):
    """The configured LLM endpoint could not produce an answer."""


@dataclass(frozen=True)
class Source:
    """One retrieved chunk, numbered as it is cited ([number]) and shown in the sources panel."""

    number: int
    source: str
    chunk: int
    score: float
    text: str


# -- extractive answer ------------------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, whitespace-squeezed, empty ones dropped.

    Paragraphs (blank-line separated) never share a sentence. Inside one, hard-wrapped lines
    are joined back (text files and PDFs wrap mid-sentence), except that headings, list items
    and quotes stay lines of their own, since they rarely end in punctuation. A period ends a
    sentence only before a word that does not start in lower case, and not after an
    abbreviation ("Mount St. Helens", "Dr. Smith"), an initial ("J. R. R. Tolkien") or a
    dotted one ("e.g.", "U.S.").
    """
    return [sentence.text for sentence in _sentences(text)]


@dataclass(frozen=True)
class _Sentence:
    text: str
    block: bool  # a heading, list item or quote line
    alone: bool  # the only sentence of its paragraph or line


def _sentences(text: str) -> list[_Sentence]:
    out = []
    for paragraph in _PARAGRAPH.split(text):
        segments: list[tuple[str, bool]] = []
        standalone = True  # the previous segment must not absorb the next line
        for line in (line.strip() for line in paragraph.splitlines()):
            if not line:
                continue
            block = bool(_BLOCK_LINE.match(line))
            if segments and not block and not standalone:
                segments[-1] = (segments[-1][0] + " " + line, segments[-1][1])
            else:
                segments.append((line, block))
            standalone = block and line.startswith("#")  # a heading never continues
        for segment, block in segments:
            parts = _split_segment(segment)
            out += [_Sentence(part, block, len(parts) == 1) for part in parts]
    return out


def _split_segment(segment: str) -> list[str]:
    parts, start = [], 0
    for end in _SENTENCE_END.finditer(segment):
        following = end.group(1)
        if following.islower():  # "approx. five", "e.g. green": no sentence starts so
            continue
        if end.group().startswith(".") and _abbreviated(segment[: end.start()]):
            continue
        parts.append(segment[start : end.end()])
        start = end.end()
    parts.append(segment[start:])
    return [" ".join(part.split()) for part in parts if part.strip()]


def _abbreviated(before: str) -> bool:
    """Whether the word that ends `before` (just ahead of a period) is an abbreviation."""
    word = before.rsplit(None, 1)[-1].lstrip("([\"'“‘") if before.strip() else ""
    if not word:
        return False
    if len(word) == 1 and word.isalpha() and word.isupper():  # an initial
        return True
    return "." in word or word.lower() in _ABBREVIATIONS


def _starts_whole(sentence: str) -> bool:
    """Whether `sentence` starts as sentences do (not inside a word or a clause)."""
    first = sentence[0]
    return not first.islower() and (first.isalnum() or first in _OPENERS)


def _ends_whole(sentence: _Sentence) -> bool:
    """Whether `sentence` ends as sentences do: with final punctuation, or as a line of its
    own (a heading, a list item, a short title) rather than mid-clause."""
    if _FINAL.search(sentence.text) or sentence.block:
        return True
    words = sentence.text.split()
    return sentence.alone and len(words) <= _TITLE_WORDS and words[-1].lower() not in _STOPWORDS


def terms(text: str) -> set[str]:
    """Content words of `text`: lower-cased, stopwords dropped, plural -s folded."""
    out = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.add(word)
    return out


@dataclass(frozen=True)
class _Candidate:
    sentence: str
    source: Source
    position: int
    terms: frozenset[str]
    cut_start: bool  # the chunk starts inside this sentence
    cut_end: bool  # the chunk ends inside this sentence


def _candidates(source: Source) -> list[_Candidate]:
    """The sentences of one retrieved chunk, with where the chunk cut them. Any chunk but a
    document's first can start inside a sentence (or a word: chunks overlap by characters),
    and any chunk can end inside one."""
    sentences = _sentences(source.text)
    return [
        _Candidate(
            sentence=sentence.text,
            source=source,
            position=pos,
            terms=frozenset(terms(sentence.text)),
            cut_start=pos == 0 and source.chunk != 0 and not _starts_whole(sentence.text),
            cut_end=pos == len(sentences) - 1 and not _ends_whole(sentence),
        )
        for pos, sentence in enumerate(sentences)
    ]


def extractive_answer(
    question: str, sources: Sequence[Source], *, max_sentences: int = DEFAULT_MAX_SENTENCES
) -> str:
    """Quote the sentences of `sources` that best match `question`, each cited as [n].

    Why lexical scoring rather than embedding every sentence: the dense retriever (the CDE
    model with the corpus context) has already chosen the chunks by meaning; inside those few
    chunks the job is precision - which sentence holds the words the question asks about. A
    sentence scores the IDF-weighted share of the question's content words it contains (IDF
    over the candidate sentences, so words found everywhere in the retrieved text count for
    little); sentences a chunk boundary cut, then Markdown headings, are left out unless
    nothing else is there (a cut piece is quoted with "…" where it was cut); ties go to the
    better-ranked chunk, then to the earlier sentence. This costs no model calls, is
    deterministic, and the user can see why a sentence was picked. When no sentence shares a
    word with the question, the answer says so and quotes the top chunk's opening sentence,
    since retrieval still judged that chunk closest.
    """
    if max_sentences < 1:
        raise ValueError(f"max_sentences must be at least 1, got {max_sentences!r}.")
    candidates = [cand for src in sources for cand in _candidates(src)]
    if not candidates:
        return "Nothing relevant is indexed yet: upload documents and index them first."
    candidates = [c for c in candidates if not (c.cut_start or c.cut_end)] or candidates
    # Headings name a topic but answer nothing; quote them only when there is nothing else.
    candidates = [c for c in candidates if not c.sentence.startswith("#")] or candidates
    wanted = terms(question)
    idf = _idf(wanted, candidates)
    total = sum(idf.values())
    scored = []
    for rank, cand in enumerate(candidates):
        score = sum(idf[t] for t in wanted & cand.terms) / total if total else 0.0
        scored.append((-score, rank, cand))
    scored.sort(key=lambda item: (item[0], item[1]))
    picked: list[_Candidate] = []
    seen: set[str] = set()
    for neg_score, _, cand in scored:
        if neg_score == 0 or len(picked) == max_sentences:
            break
        key = " ".join(cand.sentence.lower().split())
        if key in seen:  # chunk overlap repeats sentences; quote each once
            continue
        seen.add(key)
        picked.append(cand)
    if not picked:
        top = candidates[0]
        return (
            "No sentence in the retrieved passages shares a word with the question; the closest "
            f"passage begins: {_quote(top)} [{top.source.number}]"
        )
    return " ".join(f"{_quote(c)} [{c.source.number}]" for c in picked)


def _idf(wanted: set[str], candidates: Sequence[_Candidate]) -> dict[str, float]:
    n = len(candidates)
    idf = {}
    for term in wanted:
        df = sum(term in c.terms for c in candidates)
        idf[term] = math.log(1 + n / df) if df else 0.0
    return idf


def _quote(candidate: _Candidate) -> str:
    sentence = " ".join(candidate.sentence.split())
    if len(sentence) > MAX_SENTENCE_CHARS:
        sentence = sentence[: MAX_SENTENCE_CHARS - 1].rsplit(" ", 1)[0] + "…"
    elif candidate.cut_end:
        sentence += "…"
    return "…" + sentence if candidate.cut_start else sentence


# -- citations --------------------------------------------------------------------------------


def cited_numbers(answer: str) -> list[int]:
    """The source numbers an answer cites, in order of first citation."""
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(answer):
        seen.setdefault(int(match.group(1)), None)
    return list(seen)


def unknown_citations(answer: str, sources: Sequence[Source]) -> list[int]:
    """Citations that match no source (an LLM can invent them)."""
    known = {s.number for s in sources}
    return [n for n in cited_numbers(answer) if n not in known]


# -- LLM answer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMConfig:
    """Where an OpenAI-compatible chat endpoint lives; the key is never shown in `repr`."""

    base_url: str
    model: str
    api_key: str = ""

    def __repr__(self) -> str:
        key = "set" if self.api_key else "unset"
        return f"LLMConfig(base_url={self.base_url!r}, model={self.model!r}, api_key={key})"

    @classmethod
    def from_settings(
        cls,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LLMConfig | None:
        """Flags win over `CDE_RAG_LLM_*` environment variables; None when no LLM is set up.

        A base URL without a model (or the reverse) is a mistake worth stopping for, since the
        demo would otherwise silently fall back to extractive answers.
        """
        env = os.environ if env is None else env
        base_url = base_url or env.get(ENV_BASE_URL) or None
        model = model or env.get(ENV_MODEL) or None
        api_key = api_key or env.get(ENV_API_KEY) or ""
        if base_url is None and model is None:
            return None
        if base_url is None:
            raise ValueError(
                f"An LLM model is set but no base URL: set --llm-base-url or {ENV_BASE_URL} "
                "(e.g. http://127.0.0.1:8000/v1), or unset the model to get extractive answers."
            )
        if model is None:
            raise ValueError(
                f"An LLM base URL is set but no model: set --llm-model or {ENV_MODEL}, or "
                "unset the base URL to get extractive answers."
            )
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"LLM base URL must start with http:// or https://, got {base_url!r} "
                "(e.g. http://127.0.0.1:8000/v1)."
            )
        return cls(base_url=base_url, model=model, api_key=api_key)


# openai's own prefix on a status error's message; the status is reported separately.
_STATUS_PREFIX = re.compile(r"^Error code: \d+ - ")


def _server_message(exc: Any) -> str:
    """What the endpoint said about an HTTP error: its JSON `message` when it sent one."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return _STATUS_PREFIX.sub("", str(exc.message))


SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources the user gives you. Cite the sources "
    "that support each statement with their numbers in square brackets, like [1] or [2][3]. "
    "If the sources do not contain the answer, say that they do not. Be concise."
)


def llm_messages(question: str, sources: Sequence[Source]) -> list[dict[str, str]]:
    """The chat messages sent to the LLM: numbered sources, then the question."""
    blocks = [f"[{s.number}] ({s.source}, chunk {s.chunk})\n{s.text.strip()}" for s in sources]
    body = "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": body}]


def llm_answer(
    question: str, sources: Sequence[Source], config: LLMConfig, *, timeout: float = 60.0
) -> str:
    """Ask the configured endpoint; raise `AnswerError` (with the reason) when it fails."""
    import openai

    client = openai.OpenAI(
        base_url=config.base_url,
        # Local servers often need no key, but the client insists on one.
        api_key=config.api_key or "not-needed",
        timeout=timeout,
        max_retries=1,
    )
    try:
        response = client.chat.completions.create(
            model=config.model, messages=llm_messages(question, sources), temperature=0
        )
    except openai.APIStatusError as exc:
        raise AnswerError(
            f"LLM endpoint {config.base_url} answered HTTP {exc.status_code}: "
            f"{_server_message(exc)}"
        ) from exc
    except openai.APIError as exc:  # connection errors and timeouts
        raise AnswerError(f"LLM endpoint {config.base_url} failed: {exc}") from exc
    finally:
        client.close()
    choices = response.choices or []
    text = (choices[0].message.content or "").strip() if choices else ""
    if not text:
        raise AnswerError(f"LLM endpoint {config.base_url} returned an empty answer.")
    return text
