"""Integrity (issue 12 item 12): the model fingerprint covers everything that changes the
vectors, by content; a saved context's provenance cannot be edited unnoticed; unknown kinds
are refused; files of context format 1 stay readable."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from cde_rag import CDEModel, CorpusContext
from cde_rag.checkpoint import ResolvedCheckpoint, resolve_checkpoint
from cde_rag.context import LegacyContextWarning
from cde_rag.errors import ContextError, ContextMismatchError

FIXTURES = Path(__file__).parent / "fixtures"
V1_FILE = FIXTURES / "context-v1.safetensors"  # saved by cde-rag before context format 2


def _edit_json(path: Path, **changes) -> None:
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def _fingerprint(folder: Path) -> str:
    return resolve_checkpoint(folder).fingerprint


# -- the model fingerprint ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        lambda f: _edit_json(f / "backbone" / "tokenizer_config.json", cls_token="[SEP]"),
        lambda f: _edit_json(f / "backbone" / "tokenizer_config.json", unk_token="[MASK]"),
        lambda f: (f / "backbone" / "special_tokens_map.json").write_text('{"cls_token": "[SEP]"}'),
        lambda f: (f / "backbone" / "added_tokens.json").write_text('{"zzz": 600}'),
        lambda f: _edit_json(f / "backbone" / "config.json", norm_eps=1e-6),
        lambda f: _edit_json(f / "config.json", pool_ignore_instruction_tokens=True),
    ],
    ids=[
        "tokenizer-config-cls",
        "tokenizer-config-unk",
        "special-tokens-map",
        "added-tokens",
        "backbone-config",
        "contextual-config",
    ],
)
def test_every_file_that_changes_the_vectors_changes_the_fingerprint(make_checkpoint, edit):
    plain = _fingerprint(make_checkpoint("plain"))
    edited = make_checkpoint("edited")
    edit(edited)
    assert _fingerprint(edited) != plain


def test_reformatting_configs_and_random_strings_keep_the_fingerprint(make_checkpoint):
    plain = _fingerprint(make_checkpoint("plain"))
    folder = make_checkpoint("reformatted")
    for path in (folder / "config.json", folder / "backbone" / "config.json"):
        raw = json.loads(path.read_text())
        path.write_text(json.dumps(dict(reversed(raw.items())), indent=4))
    # random_strings.txt only picks the fallback's texts, which the fallback context's own
    # fingerprint covers (see test_random_strings_change_the_fallback_context_only).
    (folder / "random_strings.txt").write_text("some\nother\nstrings\n")
    assert _fingerprint(folder) == plain


def test_changed_cls_token_changes_vectors_and_refuses_old_contexts(make_checkpoint, golden):
    """The case from the issue: vectors move (cos < 1), so an old context must not open."""
    base = CDEModel.from_pretrained(make_checkpoint("base"), device="cpu")
    folder = make_checkpoint("cls")
    _edit_json(folder / "backbone" / "tokenizer_config.json", cls_token="[SEP]")
    edited = CDEModel.from_pretrained(folder, device="cpu")
    ctx = base.context(golden["minicorpus"])
    same_numbers = edited.context_from_embeddings(ctx.embeddings)
    a = base.embed_queries(golden["queries"][:1], context=ctx)[0]
    b = edited.embed_queries(golden["queries"][:1], context=same_numbers)[0]
    assert float(a @ b) < 0.9999
    with pytest.raises(ContextMismatchError, match="made by model"):
        edited.embed_queries(["q"], context=ctx)


def test_random_strings_change_the_fallback_context_only(make_checkpoint):
    folder = make_checkpoint("strings")
    (folder / "random_strings.txt").write_text("\n".join(f"alpha {i}" for i in range(40)))
    first = CDEModel.from_pretrained(folder, device="cpu").fallback_context()
    (folder / "random_strings.txt").write_text("\n".join(f"beta {i}" for i in range(40)))
    second = CDEModel.from_pretrained(folder, device="cpu").fallback_context()
    assert first.model_fingerprint == second.model_fingerprint
    assert first.fingerprint != second.fingerprint


def test_weights_are_hashed_by_content_not_by_blob_name(tiny_path, tmp_path):
    """A hub blob is named by the hash of what was downloaded; its bytes can still change."""
    original = resolve_checkpoint(tiny_path)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    content = (Path(tiny_path) / "model.safetensors").read_bytes()
    fake_name = hashlib.sha256(b"other weights").hexdigest()
    (blobs / fake_name).write_bytes(content)
    renamed = ResolvedCheckpoint(
        name="jxm/cde-small-v2",
        revision="0" * 40,
        config=original.config,
        weights_path=blobs / fake_name,
        backbone_dir=original.backbone_dir,
        random_strings_path=None,
    )
    assert renamed.weights_sha256() == hashlib.sha256(content).hexdigest() != fake_name
    assert renamed.fingerprint == original.fingerprint


# -- context provenance ------------------------------------------------------------------------


def _read_record(path: Path) -> tuple[np.ndarray, dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
        rows = fh.get_tensor("embeddings")
    return rows, meta, json.loads(meta["context"])


def _write_record(path: Path, rows: np.ndarray, meta: dict, record: dict) -> None:
    from safetensors.numpy import save_file

    save_file({"embeddings": rows}, str(path), metadata={**meta, "context": json.dumps(record)})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("minicorpus", lambda r: ["an edited text", *r["minicorpus"][1:]]),
        ("seed", lambda r: 43),
        ("kind", lambda r: "explicit"),
        ("source_size", lambda r: 1_000_000),
        ("created_at", lambda r: "2020-01-01T00:00:00+00:00"),
        ("model_name", lambda r: "someone/else"),
        ("model_revision", lambda r: "f" * 40),
        ("fit_dtype", lambda r: "bfloat16"),
    ],
)
def test_an_edited_provenance_field_is_named(tiny_model, golden, tmp_path, field, value):
    path = tiny_model.fit_context(golden["documents"] * 3, seed=5).save(tmp_path / "c.st")
    rows, meta, record = _read_record(path)
    record[field] = value(record)
    _write_record(path, rows, meta, record)
    with pytest.raises(ContextError, match=rf"{path}.*edited.*: the checksum of {field} no longer"):
        CorpusContext.load(path)


def test_edited_numbers_and_a_recomputed_field_checksum_are_caught(tiny_model, golden, tmp_path):
    path = tiny_model.fit_context(golden["documents"] * 3, seed=5).save(tmp_path / "c.st")
    rows, meta, record = _read_record(path)
    _write_record(path, rows * np.float32(1.001), meta, record)
    with pytest.raises(ContextError, match=r"the checksum of embeddings no longer matches"):
        CorpusContext.load(path)
    # Edit the minicorpus *and* its field checksum: the fingerprint still gives it away.
    rows, meta, record = _read_record(
        tiny_model.fit_context(golden["documents"], seed=5).save(path)
    )
    record["minicorpus"] = ["x", *record["minicorpus"][1:]]
    canonical = json.dumps(record["minicorpus"], sort_keys=True, separators=(",", ":"))
    record["field_checksums"]["minicorpus"] = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    _write_record(path, rows, meta, record)
    with pytest.raises(ContextError, match="fingerprint no longer matches"):
        CorpusContext.load(path)


def test_unknown_kinds_are_refused_and_repr_never_crashes(tiny_context, tmp_path):
    with pytest.raises(ContextError, match="Unknown context kind 'magic'"):
        CorpusContext(
            embeddings=tiny_context.embeddings,
            model_name="m",
            model_fingerprint="f" * 32,
            kind="magic",  # type: ignore[arg-type]
        )
    path = tiny_context.save(tmp_path / "c.st")
    rows, meta, record = _read_record(path)
    record["kind"] = "magic"
    canonical = json.dumps("magic", sort_keys=True, separators=(",", ":"))
    record["field_checksums"]["kind"] = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    _write_record(path, rows, meta, record)
    with pytest.raises(ContextError, match=rf"{path}: Unknown context kind 'magic'"):
        CorpusContext.load(path)
    for kind in ("fitted", "explicit", "fallback", "embeddings"):
        ctx = CorpusContext(
            embeddings=tiny_context.embeddings, model_name="m", model_fingerprint="f", kind=kind
        )
        assert ctx.fingerprint[:12] in repr(ctx)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seed", "42", "seed must be int"),
        ("source_size", True, "source_size must be int"),
        ("minicorpus", ("only one",), "one text per context row"),
        ("model_fingerprint", "", "model_fingerprint must be a non-empty string"),
    ],
)
def test_provenance_types_are_checked(tiny_context, field, value, message):
    fields = {
        "embeddings": tiny_context.embeddings,
        "model_name": "m",
        "model_fingerprint": "f" * 32,
        "kind": "explicit",
    }
    with pytest.raises(ContextError, match=message):
        CorpusContext(**{**fields, field: value})


def test_saved_provenance_round_trips(tiny_model, golden, tmp_path):
    ctx = tiny_model.fit_context(golden["documents"], seed=9)
    loaded = CorpusContext.load(ctx.save(tmp_path / "c.st"))
    for name in ("fingerprint", "checksum", "minicorpus", "seed", "source_size", "created_at"):
        assert getattr(loaded, name) == getattr(ctx, name)
    assert loaded.fit_dtype == "float32" and loaded.model_revision is None  # a local folder


# -- context format 1 ----------------------------------------------------------------------------


def test_format_1_files_still_open_and_embed_the_same(tiny_model, golden, tmp_path):
    _, meta, record = _read_record(V1_FILE)
    assert meta["version"] == "1"
    with pytest.warns(LegacyContextWarning, match="format 1.*Save it again"):
        legacy = CorpusContext.load(V1_FILE)
    # Records made then (Chroma configs, cache namespaces) named the numbers' checksum.
    assert legacy.checksum == record["fingerprint"] and legacy.matches(record["fingerprint"])
    assert legacy.model_fingerprint == record["model_fingerprint"] != tiny_model.fingerprint
    assert tiny_model.matches_fingerprint(legacy.model_fingerprint)
    assert (legacy.kind, legacy.seed, legacy.source_size) == ("fitted", 5, 33)
    # The same recipe fitted today: the same numbers up to float noise (today's fit embeds each
    # distinct text once, in other batches than the fit that wrote the file).
    fresh = tiny_model.fit_context(golden["documents"] * 3, seed=5)
    np.testing.assert_allclose(legacy.embeddings, fresh.embeddings, atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        tiny_model.embed_queries(golden["queries"], context=legacy),
        tiny_model.embed_queries(golden["queries"], context=fresh),
        atol=1e-6,
        rtol=0,
    )
    # Saved again, it is a format 2 file (now protected) naming the same numbers.
    again = tmp_path / "again.st"
    legacy.save(again)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyContextWarning)
        resaved = CorpusContext.load(again)
    assert resaved == legacy and resaved.fingerprint == legacy.fingerprint


def test_format_1_files_with_other_numbers_are_refused(tmp_path):
    rows, meta, record = _read_record(V1_FILE)
    path = tmp_path / "v1.st"
    _write_record(path, rows * np.float32(1.01), meta, record)
    with pytest.raises(ContextError, match="corrupted"):
        CorpusContext.load(path)


def test_another_models_legacy_fingerprint_is_still_refused(make_checkpoint):
    def perturb(weights):
        key = "second_stage_model.output_projection.0.bias"
        weights[key] = weights[key] + 0.5
        return weights

    other = CDEModel.from_pretrained(make_checkpoint(edit_weights=perturb), device="cpu")
    with pytest.warns(LegacyContextWarning):
        legacy = CorpusContext.load(V1_FILE)
    with pytest.raises(ContextMismatchError, match="made by model"):
        other.embed_queries(["q"], context=legacy)
