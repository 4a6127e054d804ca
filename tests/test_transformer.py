import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import torch
from torch import nn

from d2_detr.modeling.transformer import Transformer


def _inputs(b=2, c=32, h=3, w=4, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(b, c, h, w, generator=g)
    pos = torch.randn(b, c, h, w, generator=g)
    query = torch.randn(n, c, generator=g)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    return src, mask, query, pos


def test_shapes_and_every_layer_returned():
    t = Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=3,
                    dim_feedforward=64).eval()  # fmt: skip
    src, mask, query, pos = _inputs()
    hs, memory = t(src, mask, query, pos)
    assert hs.shape == (3, 2, 5, 32)
    assert memory.shape == src.shape
    # every decoder output passes the shared final LayerNorm: zero mean, unit variance
    torch.testing.assert_close(hs.mean(-1), torch.zeros(3, 2, 5), atol=1e-5, rtol=0)
    assert not torch.allclose(hs[0], hs[-1])


def test_uses_torch_attention_and_detr_layout():
    t = Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1)
    attn = [m for m in t.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attn) == 3  # encoder self, decoder self + cross
    assert t.encoder.norm is None and isinstance(t.decoder.norm, nn.LayerNorm)
    pre = Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1,
                      normalize_before=True)  # fmt: skip
    assert isinstance(pre.encoder.norm, nn.LayerNorm)


def test_padding_is_ignored():
    """Padded positions (any content) change nothing for the queries or valid memory."""
    for pre_norm in (False, True):
        t = Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                        dim_feedforward=64, normalize_before=pre_norm).eval()  # fmt: skip
        src, mask, query, pos = _inputs(b=1)
        hs, memory = t(src, mask, query, pos)
        big_src = torch.randn(1, 32, 5, 7)
        big_pos = torch.randn(1, 32, 5, 7)
        big_src[..., :3, :4], big_pos[..., :3, :4] = src, pos
        big_mask = torch.ones(1, 5, 7, dtype=torch.bool)
        big_mask[:, :3, :4] = False
        hs2, memory2 = t(big_src, big_mask, query, big_pos)
        torch.testing.assert_close(hs2, hs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(memory2[..., :3, :4], memory, atol=1e-5, rtol=1e-5)


def test_positions_enter_every_layer():
    """Positional embeddings are added inside the layers, not only to the input."""
    t = Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=1,
                    dim_feedforward=64).eval()  # fmt: skip
    src, mask, query, pos = _inputs(b=1)
    _, memory = t(src, mask, query, pos)
    _, memory_zero_pos = t(src, mask, query, torch.zeros_like(pos))
    assert not torch.allclose(memory, memory_zero_pos)
    # the values are never shifted by pos: adding pos to src differs from passing pos
    _, memory_shifted = t(src + pos, mask, query, torch.zeros_like(pos))
    assert not torch.allclose(memory, memory_shifted, atol=1e-4)
