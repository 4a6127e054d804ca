"""MHAttentionMap: DETR's joint softmax over heads and positions, and the optional rescaling."""

import torch

import d2_detr  # noqa: F401
from d2_detr.modeling.mask_heads import MHAttentionMap  # noqa: E402


def test_attention_maps_sum_to_one_per_query_and_rescale_by_area():
    torch.manual_seed(0)
    plain = MHAttentionMap(16, 16, 4)
    rescaled = MHAttentionMap(16, 16, 4, rescale=True)
    rescaled.load_state_dict(plain.state_dict())  # no extra parameters: checkpoints load alike
    q, k = torch.randn(2, 3, 16), torch.randn(2, 16, 5, 7)
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, :, 5:] = True  # padding of the second image
    a, b = plain(q, k, mask), rescaled(q, k, mask)
    assert a.shape == (2, 3, 4, 5, 7)
    torch.testing.assert_close(a.sum(dim=(2, 3, 4)), torch.ones(2, 3))
    assert a[1, :, :, :, 5:].abs().max() == 0  # padded positions get no weight
    torch.testing.assert_close(b, a * 35)
    assert 0.2 < b.mean().item() < 0.3  # mean 1 / num_heads instead of 1 / (heads * H * W)
