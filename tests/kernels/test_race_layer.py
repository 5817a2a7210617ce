"""RACEAttention against its reference layer: the same projections, the float64 reference
RACE attention of baselines/race.py per ensemble, averaged (CPU interpreter, fp32)."""
import pytest
import torch

from baselines import race as ref
from kernels.nn.race import RACEAttention


def reference_layer(layer, x):
    q, k, v = (t.double() for t in layer.project(x))
    outs = [ref.race_attention(q, k, v, w.double(), causal=layer.causal) for w in layer.hyperplanes]
    return layer.merge(torch.stack(outs).mean(0).float())


@pytest.mark.parametrize("causal,ensembles", [(True, 1), (True, 2), (False, 2)])
def test_layer_matches_reference_layer(causal, ensembles):
    torch.manual_seed(0)
    layer = RACEAttention(dim=32, n_heads=2, p=2, n_tables=2, ensembles=ensembles, causal=causal, chunk=16)
    x = torch.randn(2, 19, 32)
    out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference_layer(layer, x), rtol=1e-4, atol=1e-5)
    out.square().mean().backward()  # trainable end to end: the projections get gradients
    assert layer.qkv.weight.grad.abs().sum() > 0 and layer.proj.weight.grad.abs().sum() > 0
    assert "hyperplanes" in dict(layer.named_buffers()) and layer.hyperplanes.grad is None


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="power of two"):
        RACEAttention(dim=48, n_heads=2)
    with pytest.raises(ValueError, match="multiple"):
        RACEAttention(dim=33, n_heads=2)
