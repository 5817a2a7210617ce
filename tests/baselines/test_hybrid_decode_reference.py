"""The hybrid-decode references against independent formulas, and the tasks' plumbing."""
import math

import pytest
import torch
import torch.nn.functional as F

import baselines
from baselines.hybrid_decode import (block_topk, dense_decode, gather_pages, hybrid_attention, hybrid_layer_step,
                                     make_hybrid_inputs, make_topk_inputs, num_blocks, sparse_decode)

SHAPE = {"B": 3, "Hq": 8, "Hkv": 2, "D": 16, "L": 90, "P": 16, "K": 48, "R": 1, "ragged": 1}


def _sdpa_on_tokens(q, k_cache, v_cache, block_table, seq_lens, keep):
    """SDPA per sequence over the gathered tokens where keep[b, h, n] (an independent oracle)."""
    k, v = gather_pages(k_cache, block_table).double(), gather_pages(v_cache, block_table).double()
    B, Hq, D = q.shape
    G = Hq // k.shape[1]
    outs = []
    for b in range(B):
        mask = keep[b].repeat_interleave(G, 0)[:, None, :]  # [Hq, 1, N]
        kb = torch.nan_to_num(k[b]).repeat_interleave(G, 0)
        vb = torch.nan_to_num(v[b]).repeat_interleave(G, 0)
        outs.append(F.scaled_dot_product_attention(q[b].double()[:, None], kb, vb, attn_mask=mask)[:, 0])
    return torch.stack(outs)


def test_dense_decode_is_softmax_attention_over_the_sequence():
    q, kc, vc, table, lens, *_ = make_hybrid_inputs(SHAPE, torch.float64, seed=0, device="cpu")
    N = table.shape[1] * SHAPE["P"]
    keep = (torch.arange(N)[None, :] < lens[:, None]).unsqueeze(1).expand(-1, SHAPE["Hkv"], -1)
    torch.testing.assert_close(dense_decode(q, kc, vc, table, lens), _sdpa_on_tokens(q, kc, vc, table, lens, keep))


def test_sparse_decode_reads_only_the_chosen_blocks():
    q, kc, vc, table, lens, _, idx = make_hybrid_inputs(SHAPE, torch.float64, seed=1, device="cpu")
    N = table.shape[1] * SHAPE["P"]
    tok = torch.arange(N)
    keep = torch.zeros(SHAPE["B"], SHAPE["Hkv"], N, dtype=torch.bool)
    for b in range(SHAPE["B"]):
        for h in range(SHAPE["Hkv"]):
            for j in idx[b, h][idx[b, h] >= 0].tolist():
                keep[b, h] |= (tok // SHAPE["P"] == j) & (tok < lens[b])
    torch.testing.assert_close(sparse_decode(q, kc, vc, table, lens, idx), _sdpa_on_tokens(q, kc, vc, table, lens, keep))


def test_every_block_chosen_equals_dense():
    q, kc, vc, table, lens, _, _ = make_hybrid_inputs(SHAPE, torch.float64, seed=2, device="cpu")
    nb = table.shape[1]
    all_blocks = torch.arange(nb, dtype=torch.int32).expand(SHAPE["B"], SHAPE["Hkv"], nb).contiguous()
    torch.testing.assert_close(sparse_decode(q, kc, vc, table, lens, all_blocks), dense_decode(q, kc, vc, table, lens))


def test_scores_are_attention_mass():
    inputs = make_hybrid_inputs(dict(SHAPE, R=2), torch.float64, seed=3, device="cpu")
    _, scores = hybrid_attention(*inputs)
    G = SHAPE["Hq"] // SHAPE["Hkv"]
    torch.testing.assert_close(scores.sum(-1), torch.full((SHAPE["B"], SHAPE["Hkv"]), float(G)))
    nb = num_blocks(inputs[4], SHAPE["P"])
    past = torch.arange(scores.shape[-1])[None, None, :] >= nb[:, None, None]
    assert (scores[past.expand_as(scores)] == 0).all()


def test_block_topk_properties():
    scores, n, k, n_sink, n_local = make_topk_inputs({"B": 4, "Hkv": 3, "NB": 40, "K": 9, "ragged": 1},
                                                     torch.float32, seed=4, device="cpu")
    out = block_topk(scores, n, k, n_sink, n_local)
    for b in range(4):
        nb = int(n[b])
        for h in range(3):
            chosen = out[b, h][out[b, h] >= 0].tolist()
            assert len(chosen) == min(k, nb) and chosen == sorted(set(chosen))
            assert set(range(n_sink)) | set(range(nb - n_local, nb)) <= set(chosen)
            others = [j for j in range(n_sink, nb - n_local) if j not in chosen]
            picked = [j for j in chosen if n_sink <= j < nb - n_local]
            if others and picked:
                assert min(scores[b, h, picked]) >= max(scores[b, h, others])


def test_block_topk_budget_beyond_context_and_bad_scores():
    s = torch.rand(1, 1, 6)
    out = block_topk(s, torch.tensor([4]), 7, 1, 1)
    assert out.tolist() == [[[0, 1, 2, 3, -1, -1, -1]]]
    with pytest.raises(ValueError, match="non-negative"):
        block_topk(-s, torch.tensor([4]), 2, 1, 1)


def test_layer_step_passes_sparse_sets_on():
    q, kc, vc, table, lens, roles, idx = make_hybrid_inputs(SHAPE, torch.float32, seed=5, device="cpu")
    _, nxt = hybrid_layer_step(q, kc, vc, table, lens, roles, idx, 3, 1, 1)
    for h in range(SHAPE["Hkv"]):
        if not roles[h]:
            assert torch.equal(nxt[:, h], idx[:, h])
        else:
            assert not torch.equal(nxt[:, h], idx[:, h])  # a fresh choice (budget 3 != 2 inherited)


@pytest.mark.parametrize("name", ["hybrid_decode", "block_topk"])
def test_tasks_are_registered_and_consistent(name):
    task = baselines.get_task(name)
    for shape in list(task.small_shapes) + list(task.check_shapes)[:1]:
        dtype = task.dtypes[-1]
        inputs = task.make_inputs(shape, dtype, 0, "cpu")
        out = task.reference(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        assert all(not torch.isnan(o.double()).any() for o in outs)
    for shape in task.shapes:
        assert task.bytes(shape, task.dtypes[0]) > 0 and task.flops(shape) > 0
    assert math.isfinite(task.arithmetic_intensity(task.shapes[0], task.dtypes[0]))
