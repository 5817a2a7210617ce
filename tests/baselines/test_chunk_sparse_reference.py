"""The hierarchical sparse attention references against per-query loops and SDPA, and the tasks."""
import math

import pytest
import torch
import torch.nn.functional as F

import baselines
from baselines.chunk_sparse import (chunk_sparse_attn, hierarchical_attention, landmark_topn, make_chunk_attn_inputs,
                                    sliding_window_attn, tile_range)

SHAPE = {"B": 1, "Hq": 4, "Hkv": 2, "T": 53, "Tq": 53, "D": 8, "S": 8, "N": 3, "W": 10}


def _inputs(**over):
    q, k, v, lmk, idx, S = make_chunk_attn_inputs(dict(SHAPE, **over), torch.float64, seed=0, device="cpu")
    return q, k, v, lmk, idx, S


def test_window_matches_masked_sdpa():
    q, k, v, *_ = _inputs()
    T, W = SHAPE["T"], SHAPE["W"]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (j <= i) & (j > i - W)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask)
    torch.testing.assert_close(sliding_window_attn(q, k, v, W), ref)


def test_window_decode_is_the_last_prefill_row():
    q, k, v, *_ = _inputs()
    full = sliding_window_attn(q, k, v, 10)
    torch.testing.assert_close(sliding_window_attn(q[:, :, -1:], k, v, 10), full[:, :, -1:])


def test_landmark_topn_matches_a_loop():
    q, k, v, lmk, idx, S = _inputs()
    G, N = 2, SHAPE["N"]
    c0, NT = tile_range(SHAPE["T"], SHAPE["Tq"], S)
    for h in range(2):
        for t in range(NT):
            c = c0 + t
            rows = q[0, h * G:(h + 1) * G, c * S:min(c * S + S, SHAPE["T"])]  # [G, r, D]
            scores = [max(float(rows[g, r] @ lmk[0, h, i]) for g in range(G) for r in range(rows.shape[1]))
                      for i in range(c)]
            best = sorted(sorted(range(c), key=lambda i: -scores[i])[:N])
            assert idx[0, h, t].tolist() == best + [-1] * (N - len(best))


def test_chunk_sparse_attn_matches_a_loop():
    q, k, v, lmk, idx, S = _inputs()
    out = chunk_sparse_attn(q, k, v, lmk, idx, S)
    D = SHAPE["D"]
    for hq in range(4):
        h = hq // 2
        for t in range(SHAPE["T"]):
            chosen = [i for i in idx[0, h, t // S].tolist() if i >= 0]
            if not chosen:
                assert torch.all(out[0, hq, t] == 0)
                continue
            w = torch.softmax(torch.stack([q[0, hq, t] @ lmk[0, h, i] for i in chosen]) / math.sqrt(D), 0)
            want = sum(w[n] * torch.softmax(k[0, h, i * S:(i + 1) * S] @ q[0, hq, t] / math.sqrt(D), 0)
                       @ v[0, h, i * S:(i + 1) * S] for n, i in enumerate(chosen))
            torch.testing.assert_close(out[0, hq, t], want)


def test_decode_tiles_hold_one_query():
    q, k, v, lmk, idx, S = _inputs()
    dec = landmark_topn(q[:, :, -1:], lmk, SHAPE["T"], S, SHAPE["N"])
    assert dec.shape == (1, 2, 1, SHAPE["N"])
    out = hierarchical_attention(q[:, :, -1:], k, v, lmk, S, SHAPE["N"], SHAPE["W"])
    want = sliding_window_attn(q[:, :, -1:], k, v, SHAPE["W"]) + chunk_sparse_attn(q[:, :, -1:], k, v, lmk, dec, S)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("name", ["landmark_topn", "chunk_sparse_attn", "sliding_window_attn"])
def test_tasks_are_registered_and_consistent(name):
    task = baselines.get_task(name)
    for shape in task.small_shapes:
        out = task.reference(*task.make_inputs(shape, task.dtypes[-1], 0, "cpu"))
        assert not torch.isnan(out.double()).any()
    for shape in task.shapes:
        assert task.bytes(shape, task.dtypes[0]) > 0 and task.flops(shape) > 0
