"""The bench's FLOP count: a hand count on a tiny config, linear in tokens where it should be,
and the shape read from the engine's own backbone (its window is the engine's)."""

from __future__ import annotations

from cde_rag.bench_flops import (
    BackboneShape,
    attended_pairs,
    model_flops,
    sequence_flops,
    stage_flops,
)

TINY = BackboneShape(
    hidden=4, intermediate=6, layer_types=("full_attention", "sliding_attention"), window=1
)


def test_a_tiny_config_counts_as_by_hand():
    # Per layer over 3 rows: keys and values 2*3*4*8 = 192; query, output, GLU in (4 -> 12) and
    # out (6 -> 4) 2*3*(16 + 16 + 48 + 24) = 624. Attention 4*d per pair: the full layer's 3x3
    # pairs = 144; the window of 1 each side gives 2 + 3 + 2 = 7 pairs = 112.
    assert sequence_flops(TINY, 3) == {"dense": 2 * (192 + 624), "attention": 144 + 112}
    # The last layer computing row 2 only: keys and values still for all 3 rows.
    assert sequence_flops(TINY, 3, first_query=2) == {
        "dense": 816 + 192 + 2 * 1 * 104,
        "attention": 144 + 4 * 4 * 2,
    }
    # A stage adds each text's head (two 4 x 4 linear layers: 64 FLOPs).
    assert stage_flops(TINY, [3, 3]) == {"dense": 2 * 1632 + 128, "attention": 512, "total": 3904}


def test_dense_work_is_linear_in_tokens_and_attention_follows_its_window():
    shape = BackboneShape(hidden=64, intermediate=96, layer_types=("full_attention",) * 2, window=8)
    local = BackboneShape(
        hidden=64, intermediate=96, layer_types=("sliding_attention",) * 2, window=8
    )
    one, ten = sequence_flops(shape, 100), sequence_flops(shape, 1000)
    assert ten["dense"] == 10 * one["dense"]
    assert ten["attention"] == 100 * one["attention"]  # global: every pair
    # A window's pairs grow with the tokens, less its edges: 2w + 1 per query inside.
    assert attended_pairs(1000, 8) == 1000 * 17 - 2 * (8 * 9 // 2)
    assert sequence_flops(local, 1000)["attention"] == 2 * 4 * 64 * attended_pairs(1000, 8)
    assert attended_pairs(5, None, first_query=5) == 0


def test_the_count_reads_the_engines_backbone(tiny_model, golden):
    second = tiny_model.second_stage
    shape = BackboneShape.of(second.backbone.config)
    for layer, layer_type in zip(second.backbone.layers, shape.layer_types, strict=True):
        if layer_type == "sliding_attention":
            assert layer.attn.sliding_window - 1 == shape.window  # the engine's window
    texts = golden["queries"][:3]
    ids = tiny_model.encoder.encode(texts, "search_query: ")
    n_prefix = tiny_model.corpus_size + second.num_soft_prompts
    expected = stage_flops(
        shape,
        [n_prefix + len(i) for i in ids],
        [n_prefix + tiny_model._pool_start(i) for i in ids],
    )
    assert model_flops(tiny_model, texts, "second", "query") == expected
    first = model_flops(tiny_model, texts, "first")
    assert 0 < first["total"] < expected["total"]  # no context rows in the first stage
