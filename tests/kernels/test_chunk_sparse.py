"""Hierarchical chunk-sparse attention kernels against the references in baselines/chunk_sparse.py.
Tiny shapes (chunks of 16, d 16): the interpreter runs one program at a time."""
import os

import pytest
import torch

from baselines.chunk_sparse import (chunk_sparse_attn as ref_chunk_sparse_attn, hierarchical_attention,
                                    landmark_topn as ref_landmark_topn, sliding_window_attn as ref_window,
                                    make_chunk_attn_inputs, make_topn_inputs, make_window_inputs)
from kernels.chunk_sparse import chunk_sparse_attn, landmark_topn, sliding_window_attn

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"
TOL = {torch.float32: 2e-5, torch.float16: 3e-3}

SHAPES = {
    "prefill": {"B": 1, "Hq": 4, "Hkv": 2, "T": 77, "Tq": 77, "D": 16, "S": 16, "N": 2, "W": 24},
    "decode": {"B": 2, "Hq": 2, "Hkv": 1, "T": 50, "Tq": 1, "D": 16, "S": 16, "N": 4, "W": 20},
    "chunked": {"B": 1, "Hq": 3, "Hkv": 1, "T": 70, "Tq": 29, "D": 16, "S": 16, "N": 3, "W": 40},  # G = 3
    "n_above_chunks": {"B": 1, "Hq": 2, "Hkv": 2, "T": 40, "Tq": 40, "D": 16, "S": 16, "N": 5, "W": 100},
}


def _check(out, ref, dtype):
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(SHAPES))
def test_landmark_topn_matches_reference(name, dtype):
    inputs = make_topn_inputs(SHAPES[name], dtype, seed=1, device=DEVICE)
    assert torch.equal(landmark_topn(*inputs), ref_landmark_topn(*inputs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(SHAPES))
def test_chunk_sparse_attn_matches_reference(name, dtype):
    inputs = make_chunk_attn_inputs(SHAPES[name], dtype, seed=2, device=DEVICE)
    _check(chunk_sparse_attn(*inputs), ref_chunk_sparse_attn(*inputs), dtype)


def test_chunk_sparse_attn_any_index_set():
    """Gaps (-1) anywhere and chunks in any order give the reference's answer."""
    q, k, v, lmk, idx, S = make_chunk_attn_inputs(SHAPES["prefill"], torch.float32, seed=3, device=DEVICE)
    idx = idx.clone()
    idx[..., 0] = -1
    _check(chunk_sparse_attn(q, k, v, lmk, idx.flip(-1), S), ref_chunk_sparse_attn(q, k, v, lmk, idx, S), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(SHAPES))
def test_window_matches_reference(name, dtype):
    inputs = make_window_inputs(SHAPES[name], dtype, seed=4, device=DEVICE)
    _check(sliding_window_attn(*inputs), ref_window(*inputs), dtype)


def test_window_of_one_is_the_value():
    q, k, v, _ = make_window_inputs(SHAPES["prefill"], torch.float32, seed=5, device=DEVICE)
    torch.testing.assert_close(sliding_window_attn(q, k, v, 1), v.repeat_interleave(2, dim=1))


def test_layer_matches_reference():
    from kernels.nn.hierarchical import HierarchicalSparseAttention
    shape = SHAPES["prefill"]
    q, k, v, _ = make_window_inputs(shape, torch.float32, seed=6, device=DEVICE)
    layer = HierarchicalSparseAttention(16, chunk_size=16, top_n=2, window=24).to(DEVICE)
    with torch.no_grad():
        torch.nn.init.normal_(layer.encoder.down.weight, std=0.1)  # a trained-looking encoder
        out = layer(q, k, v)
        lmk = layer.encoder(k, 16)
    _check(out, hierarchical_attention(q, k, v, lmk, 16, 2, 24), torch.float32)
    with torch.no_grad():  # a decode step: the newest query alone, landmarks passed in
        _check(layer(q[:, :, -1:], k, v, landmarks=lmk), hierarchical_attention(q[:, :, -1:], k, v, lmk, 16, 2, 24),
               torch.float32)
    window_only = HierarchicalSparseAttention(16, chunk_size=16, top_n=2, window=24, sparse=False)
    _check(window_only(q, k, v), ref_window(q, k, v, 24), torch.float32)


def test_opcheck():
    shape = SHAPES["decode"]
    q, lmk, T, S, N = make_topn_inputs(shape, torch.float32, seed=7, device=DEVICE)
    torch.library.opcheck(torch.ops.evo.landmark_topn.default, (q, lmk, T, S, N))
    torch.library.opcheck(torch.ops.evo.chunk_sparse_attn.default, make_chunk_attn_inputs(shape, torch.float32, 7, DEVICE))
    torch.library.opcheck(torch.ops.evo.sliding_window_attn.default, make_window_inputs(shape, torch.float32, 7, DEVICE))


def test_bad_input_is_refused():
    q, k, v, lmk, idx, S = make_chunk_attn_inputs(SHAPES["prefill"], torch.float32, seed=8, device=DEVICE)
    with pytest.raises(ValueError, match="bad shapes"):
        chunk_sparse_attn(q, k, v, lmk, idx[:, :, :2], S)
    with pytest.raises(ValueError, match="bad arguments"):
        landmark_topn(q, lmk, k.shape[2], 24, 2)
    with pytest.raises(ValueError, match="bad arguments"):
        sliding_window_attn(q, k, v, 0)
