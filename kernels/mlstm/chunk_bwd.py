"""mLSTM chunkwise backward (Triton): the forward's two kernels, reused.

Treating the stabilizer m as a constant (h depends on it only through eps), with
A_tj = exp(F_t - F_j + i_j - m_t) (q_t . k_j) / sqrt(DQK), s_t = sum_j A_tj, den_t = max(|s_t|, exp(-m_t)) + eps,
h_t = sum_j A_tj v_j / den_t and g = dL/dh:
  dnum_t = g_t / den_t,  ds_t = -(g_t . h_t) / den_t * sign(s_t) [|s_t| > exp(-m_t)],
  dA_tj = dnum_t . v_j + ds_t = (g_t . v_j + ds'_t) / den_t   with ds'_t = ds_t den_t.
  dq_t = sum_{j<=t} dA_tj A_tj/q_t..k: the forward's product with (X, Y, Z) = (g, v, k) over the
         forward states C^T (and ds' n), the 1/den folded into the row gates;
  dv_j = sum_{t>=j} A_tj dnum_t and dk_j = sum_{t>=j} dA_tj exp(..) q_t: the same product
         reversed, over reverse states R_c = sum_{t after chunk c} exp(b_t + m_c - m_t) q_t dnum_t^T
         and r_c (the same with ds), made by the state scan run backwards.
  Gates: d log D_tj = dA_tj A_tj, whose row sums are q_t . dq_t and column sums k_j . dk_j, so
         di_j = k_j . dk_j and d logsigmoid(f)_t = sum_{s>=t} (q_s . dq_s - k_s . dk_s) (torch).
"""
import math

import torch
import torch.nn.functional as F

from kernels.mlstm.chunk_fwd import CHUNK, TILE, attend, check_inputs, gate_terms, row_dots, state_scan

def mlstm_chunkwise_bwd(dh, q, k, v, i, f, h, c_states, n_states, den, s, chunk=None, tile=None):
    chunk = chunk or CHUNK
    tile = min(tile or TILE, chunk)
    check_inputs(q, k, v, i, f, chunk, tile)
    b, nh, t, dqk = q.shape
    dv = v.shape[-1]
    bh = b * nh
    scale = 1.0 / math.sqrt(dqk)
    q, k, v, h, dh = (x.reshape(bh, t, x.shape[-1]).contiguous() for x in (q, k, v, h, dh))
    gates = gate_terms(i.reshape(bh, t), f.reshape(bh, t), chunk)
    tp = gates["row"].shape[-1]
    m = gates["m"][:, :t]
    live = (s.abs() > torch.exp(-m)).float()
    ds_scaled = F.pad(-row_dots(dh, h) * torch.sign(s) * live, (0, tp - t))  # ds' = ds * den
    log_den = F.pad(torch.log(den), (0, tp - t))
    row_g = gates["row"] - log_den
    r_states, r_vec, _ = state_scan(q, dh, gates["inter"] - log_den, gates["decay"], chunk=chunk, reverse=True,
                                    coef=ds_scaled)
    common = dict(chunk=chunk, tile=tile, scale=scale)
    # with the gate gradients' row dots q . dq and k . dk
    dq, row_sums = attend(dh, v, k, c_states, n_states, row_g, gates["col"], gates["inter"] - log_den, state_t=True,
                          extra=ds_scaled, row_extra=True, dot_w=q, **common)
    dk, col_sums = attend(v, dh, q, r_states, r_vec, gates["col"], row_g, gates["weight"], state_t=True,
                          reverse=True, extra=ds_scaled, col_extra=True, dot_w=k, **common)
    dv_ = attend(k, q, dh, r_states, r_vec, gates["col"], row_g, gates["weight"], reverse=True, **common)
    # gate gradients from the row and column sums of dL/dlog D
    d_log_f = (row_sums - col_sums).flip(-1).cumsum(-1).flip(-1)
    df = d_log_f * torch.sigmoid(-f.reshape(bh, t).float())
    shape = (b, nh, t)
    return (dq.view(b, nh, t, dqk), dk.view(b, nh, t, dqk), dv_.view(b, nh, t, dv),
            col_sums.view(shape).to(i.dtype), df.view(shape).to(f.dtype))
