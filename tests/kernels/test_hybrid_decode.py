"""Hybrid-head sparse decode kernels against the references in baselines/hybrid_decode.py.
Tiny shapes (pages of 16, d 16): the interpreter runs one program at a time."""
import os

import pytest
import torch

from baselines.hybrid_decode import (block_topk as ref_block_topk, dense_decode as ref_dense_decode,
                                     hybrid_attention, hybrid_decode_layers, hybrid_layer_step, make_hybrid_inputs,
                                     make_topk_inputs, num_blocks)
from kernels.hybrid_decode import block_topk, decode, dense_decode, hybrid_decode

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"
TOL = {torch.float32: 2e-5, torch.float16: 3e-3}


def _shape(**over):
    shape = {"B": 2, "Hq": 4, "Hkv": 2, "D": 16, "L": 70, "P": 16, "K": 48, "R": 1, "ragged": 1}
    shape.update(over)
    return shape


def _check(out, ref, dtype):
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mix", [
    {"R": 1},                        # one retrieval, one sparse KV head; partial last pages
    {"R": 2},                        # all retrieval
    {"R": 0, "L": 37},               # all sparse, odd length
    {"R": 1, "K": 400, "L": 45},     # budget larger than the context: every block, -1 padded
    {"R": 1, "Hq": 6, "Hkv": 2},     # 3 query heads per KV head (G not a power of two)
])
def test_hybrid_decode_matches_reference(dtype, mix):
    inputs = make_hybrid_inputs(_shape(**mix), dtype, seed=1, device=DEVICE)
    o, scores = hybrid_decode(*inputs)
    ref_o, ref_scores = hybrid_attention(*inputs)
    _check(o, ref_o, dtype)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-4)
    assert scores.shape == (2, mix.get("Hkv", 2), inputs[3].shape[1])


@pytest.mark.parametrize("programs,tile,chunk,score_block,sparse_cost", [
    (1, 1, 2, 4, 8), (3, 2, 4, 2, 9), (7, 4, 16, 1024, 12), (500, 2, 2, 4, 8), (11, 2, 4, 4, 17)])
def test_program_counts_and_tile_sizes(programs, tile, chunk, score_block, sparse_cost, monkeypatch):
    """One program for everything, ranges that cut heads and tiles anywhere (and, with sparse
    pages dearer, hold no page of a head they touch), more programs than pages; tiles of several
    pages; partials merged in several chunks; block scores written by several programs per head."""
    monkeypatch.setattr(decode, "PROGRAMS_PER_SM", programs)  # one "multiprocessor" off the GPU
    monkeypatch.setattr(decode, "TILE_PAGES", tile)
    monkeypatch.setattr(decode, "SPLIT_CHUNK", chunk)
    monkeypatch.setattr(decode, "SCORE_BLOCK", score_block)
    monkeypatch.setattr(decode, "SPARSE_PAGE_COST", sparse_cost)
    inputs = make_hybrid_inputs(_shape(L=85, K=64, Hkv=3, Hq=6, R=2), torch.float32, seed=8, device=DEVICE)
    o, scores = hybrid_decode(*inputs)
    ref_o, ref_scores = hybrid_attention(*inputs)
    _check(o, ref_o, torch.float32)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-4)


def test_sparse_heads_read_only_their_blocks():
    """Poison every page a sparse head did not choose: its output must not change."""
    inputs = list(make_hybrid_inputs(_shape(R=0, L=96, K=32), torch.float32, seed=2, device=DEVICE))
    q, k_cache, v_cache, block_table, seq_lens, roles, indices = inputs
    o, _ = hybrid_decode(*inputs)
    k2, v2 = k_cache.clone(), v_cache.clone()
    for b in range(q.shape[0]):
        for h in range(k_cache.shape[1]):
            keep = set(indices[b, h][indices[b, h] >= 0].tolist())
            for j in range(int(num_blocks(seq_lens[b], 16))):
                if j not in keep:
                    k2[block_table[b, j], h] = float("nan")
                    v2[block_table[b, j], h] = float("nan")
    o2, _ = hybrid_decode(q, k2, v2, block_table, seq_lens, roles, indices)
    assert torch.equal(o, o2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dense_decode_matches_reference(dtype):
    q, k_cache, v_cache, block_table, seq_lens, *_ = make_hybrid_inputs(_shape(L=53), dtype, seed=3, device=DEVICE)
    _check(dense_decode(q, k_cache, v_cache, block_table, seq_lens),
           ref_dense_decode(q, k_cache, v_cache, block_table, seq_lens), dtype)


@pytest.mark.parametrize("shape", [
    {"B": 2, "Hkv": 2, "NB": 50, "K": 7, "ragged": 1},
    {"B": 2, "Hkv": 1, "NB": 5, "K": 9, "ragged": 1},   # k larger than the blocks there are
    {"B": 1, "Hkv": 3, "NB": 1, "K": 4},
    {"B": 3, "Hkv": 2, "NB": 300, "K": 33, "ragged": 1},
])
def test_block_topk_matches_reference(shape):
    inputs = make_topk_inputs(shape, torch.float32, seed=4, device=DEVICE)
    out = block_topk(*inputs)
    assert torch.equal(out, ref_block_topk(*inputs))


def test_block_topk_ties_and_forced_blocks():
    scores = torch.ones(1, 2, 12, device=DEVICE)  # all tied: the lowest blocks win
    scores[0, 1, 5] = 2.0
    n = torch.tensor([12], dtype=torch.int32, device=DEVICE)
    out = block_topk(scores, n, 5, 1, 2)
    assert out.tolist() == [[[0, 1, 2, 10, 11], [0, 1, 5, 10, 11]]]
    assert torch.equal(out, ref_block_topk(scores, n, 5, 1, 2))
    # More forced blocks than the budget: the lowest forced ones.
    assert block_topk(scores, n, 2, 1, 4).tolist() == [[[0, 8], [0, 8]]]


@pytest.mark.parametrize("correction", [False, True])
def test_layer_carries_index_sets(correction):
    """Three layers through the module against the reference layer loop."""
    from kernels.nn.hybrid_decode import HybridHeadSparseDecode
    torch.manual_seed(0)
    shape = _shape(L=90, K=32, Hkv=3, Hq=6)
    q0, k0, v0, block_table, seq_lens, *_ = make_hybrid_inputs(shape, torch.float32, seed=10, device=DEVICE)
    # Later layers: fresh queries and caches over the same pages (one block table per model).
    layers = [(q0, k0, v0)] + [(3 * torch.randn_like(q0), torch.randn_like(k0), torch.randn_like(v0)) for _ in range(2)]
    roles = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.bool, device=DEVICE)
    mod = HybridHeadSparseDecode(roles, budget=32, page_size=16, n_sink=1, n_local=1,
                                 correction_every=4 if correction else None)
    step = 8 if correction else 1
    indices, outs = None, []
    for layer, inp in enumerate(layers):
        o, indices = mod(layer, inp[0], inp[1], inp[2], block_table, seq_lens, indices, step=step)
        outs.append(o)
    refs = hybrid_decode_layers([i[0] for i in layers], [i[1] for i in layers], [i[2] for i in layers],
                                block_table, seq_lens, roles, 2, 1, 1, dense=correction)
    for o, r in zip(outs, refs):
        _check(o, r, torch.float32)


def test_layer_step_matches_reference():
    """One sparse layer's step (decode on the inherited blocks, then the next blocks) against
    the reference step."""
    from kernels.nn.hybrid_decode import HybridHeadSparseDecode
    q, k_cache, v_cache, block_table, seq_lens, roles, indices = make_hybrid_inputs(
        _shape(L=90, K=32, Hkv=3, Hq=6, R=1), torch.float32, seed=12, device=DEVICE)
    mod = HybridHeadSparseDecode(roles.bool()[None].repeat(2, 1), budget=32, page_size=16, n_sink=1, n_local=2)
    o, next_indices = mod(1, q, k_cache, v_cache, block_table, seq_lens, indices)
    ref_o, ref_next = hybrid_layer_step(q, k_cache, v_cache, block_table, seq_lens, roles, indices, 2, 1, 2)
    _check(o, ref_o, torch.float32)
    assert torch.equal(next_indices, ref_next)


def test_opcheck():
    inputs = make_hybrid_inputs(_shape(L=40), torch.float32, seed=5, device=DEVICE)
    torch.library.opcheck(torch.ops.evo.hybrid_decode.default, inputs)
    torch.library.opcheck(torch.ops.evo.dense_decode.default, inputs[:5])
    topk_inputs = make_topk_inputs({"B": 2, "Hkv": 2, "NB": 20, "K": 5}, torch.float32, seed=6, device=DEVICE)
    torch.library.opcheck(torch.ops.evo.block_topk.default, topk_inputs)


def test_no_pdl_off_the_gpu():
    """Programmatic dependent launch only on CUDA devices of compute capability 9+, never under
    the interpreter (which has no griddepcontrol)."""
    assert not decode.pdl_enabled(torch.device("cpu"))


def test_bad_input_is_refused():
    q, k_cache, v_cache, block_table, seq_lens, roles, indices = make_hybrid_inputs(_shape(), torch.float32, 7, DEVICE)
    with pytest.raises(ValueError, match="bad shapes"):
        hybrid_decode(q[:, :3], k_cache, v_cache, block_table, seq_lens, roles, indices)
    with pytest.raises(ValueError, match="float32"):
        block_topk(torch.ones(1, 1, 4, dtype=torch.float16, device=DEVICE), seq_lens[:1], 2, 1, 1)
