"""Loading files (including hostile ones) and chunking them with stable ids."""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cde_rag.documents import (
    SUPPORTED_SUFFIXES,
    Chunk,
    Document,
    DocumentError,
    chunk_documents,
    load_document,
    load_documents,
)
from cde_rag.errors import CDEError


def make_pdf(
    pages: list[str | None], user_password: str | None = None, owner_password: str | None = None
) -> bytes:
    """A real PDF with one Helvetica text line per page (None: a blank page), via pypdf."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    font_ref = writer._add_object(font)
    for text in pages:
        page = writer.add_blank_page(612, 792)
        if text is None:
            continue
        safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 72 720 Td ({safe}) Tj ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font_ref})}
        )
    if user_password is not None:
        writer.encrypt(
            user_password=user_password, owner_password=owner_password, algorithm="RC4-128"
        )
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


# -- single files ------------------------------------------------------------------------------


def test_plain_text_and_markdown(tmp_path):
    doc = load_document(write(tmp_path / "a.txt", "Hello\r\nworld\r\n\r\n\r\n\r\nend"))
    assert doc.text == "Hello\nworld\n\nend"
    assert doc.source == "a.txt"
    assert doc.metadata == {"source": "a.txt", "type": "txt", "bytes": 23, "encoding": "utf-8"}
    md = load_document(write(tmp_path / "b.md", "# Title\n\n* item"), source="upload.md")
    assert (md.text, md.source, md.metadata["type"]) == ("# Title\n\n* item", "upload.md", "md")


@pytest.mark.parametrize(
    ("data", "text", "encoding"),
    [
        ("\ufeffBOM first".encode(), "BOM first", "utf-8"),
        ("hi ☃ there".encode("utf-16"), "hi ☃ there", "utf-16"),
        ("café naïve".encode("cp1252"), "café naïve", "cp1252"),
        (
            "café ".encode() + b"\xff ok",
            "café \ufffd ok",
            "utf-8 (invalid bytes replaced)",
        ),
        (b"a\x07b\x1bc\x7fd\x00e", None, None),  # NUL: binary
    ],
)
def test_encodings(tmp_path, data, text, encoding):
    path = write(tmp_path / "x.txt", data)
    if text is None:
        with pytest.raises(DocumentError, match="binary"):
            load_document(path)
        return
    doc = load_document(path)
    assert (doc.text, doc.metadata["encoding"]) == (text, encoding)


def test_control_characters_are_stripped_but_text_kept(tmp_path):
    doc = load_document(
        write(tmp_path / "c.txt", "ring\x07 the\x1b[31m bell\x0cpage two\u0085\ufffe".encode())
    )
    assert doc.text == "ring the[31m bell\npage two"


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.txt", b"", "empty file"),
        ("blank.md", b" \n\t\r\n ", "empty file"),
        ("controls.txt", b"\x01\x02\x03 \x04", "no text left"),
        ("renamed-png.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary"),
        ("noisy.txt", bytes(range(1, 32)) * 20 + b"some words", "binary data"),
        ("bom-only.txt", b"\xff\xfe", "no text left"),
        ("image.png", b"\x89PNG", "unsupported file type '.png'"),
        ("noext", b"text", "unsupported file type '(no extension)'"),
        ("page.html", b"<html><body>\x00\x01binary</body></html>", "binary"),
        ("empty.html", b"<html><script>x()</script></html>", "no text left"),
        ("garbage.pdf", b"%PDF-1.4\nthis is not a pdf", "not a readable PDF"),
        ("blank.pdf", make_pdf([None, None]), "no extractable text"),
        ("locked.pdf", make_pdf(["secret"], user_password="pw", owner_password="o"), "encrypted"),
    ],
)
def test_bad_files_raise_document_error(tmp_path, name, data, reason):
    path = write(tmp_path / name, data)
    with pytest.raises(DocumentError, match=re.escape(reason)) as info:
        load_document(path)
    assert isinstance(info.value, CDEError) and isinstance(info.value, ValueError)


def test_size_limit_checked_before_reading(tmp_path):
    path = write(tmp_path / "big.txt", "x" * 5000)
    with pytest.raises(DocumentError, match="5,000 bytes, over the 4,096-byte limit"):
        load_document(path, max_bytes=4096)
    assert load_document(path, max_bytes=5000).text == "x" * 5000


def test_pdf_text_pages_and_owner_only_encryption(tmp_path):
    doc = load_document(write(tmp_path / "r.pdf", make_pdf(["First page (1)", None, "Third"])))
    assert doc.text == "First page (1)\n\nThird"
    assert doc.metadata["pages"] == 3
    # Encrypted with an empty user password (only editing is restricted): it opens.
    opened = load_document(write(tmp_path / "o.pdf", make_pdf(["Open me"], "", "owner")))
    assert opened.text == "Open me"


@pytest.mark.parametrize(
    ("html", "text", "title"),
    [
        (
            "<html><head><title> My\n page </title><style>p{color:red}</style></head><body>"
            "<script>alert('x')</script><h1>Head</h1><p>One <b>bold</b>\n word</p>"
            "<ul><li>a</li><li>b</li></ul><noscript>js off</noscript>tail</body></html>",
            "Head\n\nOne bold word\n\na\nb\n\ntail",
            "My page",
        ),
        # Only visible text: no doctype (it leaked as "html"), comments, CDATA, processing
        # instructions, conditional comments or templates; ruby annotations are visible.
        (
            "<!DOCTYPE html><?xml-stylesheet href='a.css'?><html><head><title>T</title>"
            "<script>var hidden = 1;</script></head><body><!-- a comment -->"
            "<p>Visible <![CDATA[cdata text]]>text<![if !IE]>, kept<![endif]></p>"
            "<style>p {}</style><noscript>no js</noscript><template>later</template>"
            "<p>Ruby <ruby>漢<rp>(</rp><rt>kan</rt><rp>)</rp></ruby></p></body></html>",
            "Visible text, kept\n\nRuby 漢(kan)",
            "T",
        ),
    ],
)
def test_html_keeps_visible_text_and_paragraphs(tmp_path, html, text, title):
    doc = load_document(write(tmp_path / "p.htm", html))
    assert doc.text == text
    assert doc.metadata["title"] == title


def test_html_declared_encoding(tmp_path):
    latin = "<html><head><meta charset='iso-8859-1'></head><body>caf\xe9</body></html>"
    assert load_document(write(tmp_path / "l.html", latin.encode("latin-1"))).text == "café"


def test_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(DocumentError, match="not a regular file"):
        load_document(fifo)  # would block forever if opened
    with pytest.raises(DocumentError, match="no such file"):
        load_document(tmp_path / "missing.txt")


# -- folders -----------------------------------------------------------------------------------


def test_folder_walk_sources_and_skips(tmp_path):
    root = tmp_path / "docs"
    write(root / "b.txt", "bee")
    write(root / "a.md", "ay")
    write(root / "sub" / "c.html", "<p>see</p>")
    write(root / "sub" / "deeper" / "d.txt", "dee")
    write(root / ".git" / "config.txt", "hidden")
    write(root / ".secret.txt", "hidden")
    write(root / "empty.txt", "")
    write(root / "tool.exe", b"MZ\x00\x00")
    outside = write(tmp_path / "outside" / "passwd.txt", "root:x:0:0")
    os.symlink(outside, root / "link-out.txt")
    os.symlink(outside.parent, root / "linked-folder")
    os.symlink(root / "b.txt", root / "link-in.txt")
    os.symlink(root / "nowhere.txt", root / "broken.txt")
    os.symlink(root / "loop.txt", root / "loop.txt")

    result = load_documents([root])
    assert [d.source for d in result.documents] == [
        "docs/a.md",
        "docs/b.txt",
        "docs/sub/c.html",
        "docs/sub/deeper/d.txt",
    ]
    assert [d.text for d in result.documents] == ["ay", "bee", "see", "dee"]
    reasons = {Path(path).name: reason for path, reason in result.skipped}
    assert reasons == {
        ".git": "hidden folder, not read",
        ".secret.txt": "hidden file, not read",
        "empty.txt": "empty file",
        "tool.exe": "unsupported file type '.exe'; supported: " + ", ".join(SUPPORTED_SUFFIXES),
        "link-out.txt": f"symlink to {outside}, outside {root}; not followed",
        "linked-folder": "symlinked folder, not followed",
        "link-in.txt": "same file already loaded (duplicate path or link)",
        "broken.txt": "broken or looping symlink",
        "loop.txt": "broken or looping symlink",
    }
    assert "root:x" not in " ".join(d.text for d in result.documents)

    flat = load_documents(root, recursive=False)
    assert [d.source for d in flat.documents] == ["docs/a.md", "docs/b.txt"]


def test_source_is_independent_of_how_the_folder_is_spelled(tmp_path, monkeypatch):
    write(tmp_path / "docs" / "x.txt", "text")
    monkeypatch.chdir(tmp_path)
    spellings = ["docs", "./docs/", str(tmp_path / "docs"), "docs/../docs"]
    sources = {load_documents([s]).documents[0].source for s in spellings}
    assert sources == {"docs/x.txt"}


def test_explicit_paths_missing_and_duplicates(tmp_path):
    a = write(tmp_path / "a.txt", "alpha")
    result = load_documents([a, tmp_path / "nope.txt", str(a), tmp_path / "d" / ".." / "a.txt"])
    assert [d.source for d in result.documents] == ["a.txt"]
    assert result.skipped == [
        (str(tmp_path / "nope.txt"), "no such file or folder"),
        (str(tmp_path / "d" / ".." / "a.txt"), "no such file or folder"),  # d/ does not exist
        (str(a), "same file already loaded (duplicate path or link)"),
    ]


def test_hostile_file_names_become_printable_sources(tmp_path):
    root = tmp_path / "up"
    root.mkdir()
    raw = os.fsencode(root) + b"/bad\xffname\nwith\x1bctrl.txt"
    with open(raw, "wb") as fh:
        fh.write(b"content")
    write(root / "-rf --help.md", "dash")
    result = load_documents([root])
    sources = sorted(d.source for d in result.documents)
    assert sources == ["up/-rf --help.md", "up/bad\ufffdname with ctrl.txt"]
    for source in sources:
        source.encode("utf-8")  # valid UTF-8: storable as Chroma metadata


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = write(tmp_path / "locked.txt", "x")
    path.chmod(0)
    assert load_documents([path]).skipped == [(str(path), "permission denied")]


def test_many_tiny_files(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(3000):
        (root / f"f{i:05d}.txt").write_text(f"tiny file number {i}")
    started = time.perf_counter()
    result = load_documents([root])
    elapsed = time.perf_counter() - started
    assert len(result.documents) == 3000 and result.skipped == []
    assert result.documents[1234].text == "tiny file number 1234"
    assert elapsed < 20, f"loading 3000 tiny files took {elapsed:.1f}s"
    assert len(chunk_documents(result.documents, chunk_size=100, chunk_overlap=10)) == 3000


# -- chunking ----------------------------------------------------------------------------------


def test_chunks_ids_and_metadata():
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 30 for i in range(6))
    doc = Document(text=text, source="docs/p.txt", metadata={"source": "docs/p.txt", "type": "txt"})
    chunks = chunk_documents([doc], chunk_size=200, chunk_overlap=40)
    assert len(chunks) > 3
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert len({c.id for c in chunks}) == len(chunks)
    for c in chunks:
        assert c.metadata["chunk"] == c.index and c.metadata["type"] == "txt"
        assert c.metadata["source"] == c.source == "docs/p.txt"
        start = c.metadata["start_index"]
        assert text[start : start + len(c.text)] == c.text
        assert all(isinstance(v, (str, int, float, bool)) for v in c.metadata.values())
    # The same input gives the same ids; another source or changed text gives other ids.
    assert [c.id for c in chunk_documents([doc], chunk_size=200, chunk_overlap=40)] == [
        c.id for c in chunks
    ]
    moved = chunk_documents([Document(text, "other/p.txt", {})], chunk_size=200, chunk_overlap=40)
    assert not {c.id for c in moved} & {c.id for c in chunks}
    edited = Document(text.replace("Paragraph 5", "Paragraph five"), "docs/p.txt", {})
    edited_ids = [c.id for c in chunk_documents([edited], chunk_size=200, chunk_overlap=40)]
    assert edited_ids[0] == chunks[0].id and edited_ids[-1] != chunks[-1].id


def test_chunk_parameter_errors():
    doc = [Document("text", "s", {})]
    for size, overlap in [(0, 0), (-5, 0), (100, 100), (100, -1), (10.5, 0), (True, 0)]:
        with pytest.raises(ValueError, match="chunk_"):
            chunk_documents(doc, chunk_size=size, chunk_overlap=overlap)
    with pytest.raises(TypeError, match="Document objects"):
        chunk_documents(["plain string"])
    assert chunk_documents([]) == []


texts = st.one_of(
    st.text(min_size=1, max_size=400),
    st.lists(
        st.sampled_from(["a", "b", "word", " ", "  ", "\n", "\n\n", "\t", ".", "é", "中", "🙂"]),
        min_size=1,
        max_size=200,
    ).map("".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, size=st.integers(1, 120), data=st.data())
def test_chunking_properties(text, size, data):
    overlap = data.draw(st.integers(0, size - 1), label="overlap")
    doc = Document(text=text, source="src", metadata={})
    chunks = chunk_documents([doc], chunk_size=size, chunk_overlap=overlap)
    if not text.strip():
        assert chunks == []
        return
    covered = bytearray(len(text))
    previous = 0
    for i, chunk in enumerate(chunks):
        assert isinstance(chunk, Chunk) and chunk.index == i
        assert chunk.text.strip() and len(chunk.text) <= size
        start = chunk.metadata["start_index"]
        assert start >= previous and text[start : start + len(chunk.text)] == chunk.text
        previous = start
        covered[start : start + len(chunk.text)] = b"\x01" * len(chunk.text)
    uncovered = [ch for ch, c in zip(text, covered) if not c]
    assert all(ch.isspace() for ch in uncovered)  # only whitespace between chunks is dropped
    again = chunk_documents([doc], chunk_size=size, chunk_overlap=overlap)
    assert [c.id for c in again] == [c.id for c in chunks]
    assert len({c.id for c in chunks}) == len(chunks)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=3000),
        st.text(max_size=1000).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.text(max_size=500).map(lambda t: t.encode("utf-16")),
        st.binary(max_size=500).map(lambda b: b"%PDF-1.4\n" + b),
        st.text(max_size=500).map(lambda t: f"<html><body><p>{t}</p></body></html>".encode()),
    ),
    suffix=st.sampled_from(SUPPORTED_SUFFIXES),
)
def test_any_bytes_load_cleanly_or_give_a_reason(data, suffix):
    """Whatever the bytes, loading returns clean text or raises DocumentError, nothing else."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        try:
            doc = load_document(path)
        except DocumentError as exc:
            assert str(exc)
            return
    assert doc.text.strip() == doc.text and doc.text
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff]", doc.text)
    doc.text.encode("utf-8")  # no lone surrogates: storable anywhere


@pytest.mark.parametrize(
    ("text", "size", "overlap"),
    [("0000", 2, 1), ("00000", 3, 2), ("000 000", 2, 1), ("aaaa bbbb", 2, 1)],
)
def test_offsets_in_repetitive_text_fit_together(text, size, overlap):
    # Found by hypothesis: the latest match of a piece can leave no room for the next one.
    chunks = chunk_documents([Document(text, "src", {})], chunk_size=size, chunk_overlap=overlap)
    starts = [c.metadata["start_index"] for c in chunks]
    assert starts == sorted(starts)
    for chunk, start in zip(chunks, starts):
        assert text[start : start + len(chunk.text)] == chunk.text


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    """`load_documents("~/notes")` from Python reads what `cde-rag index ~/notes` reads."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "plan.md").write_text("Ship on Friday.")
    loaded = load_documents("~/notes")
    assert [doc.source for doc in loaded.documents] == ["notes/plan.md"]
    assert loaded.skipped == []
