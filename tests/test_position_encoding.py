import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import math

import torch

from d2_detr.modeling.position_encoding import PositionEmbeddingSine


def test_values_match_formula():
    pe = PositionEmbeddingSine(num_pos_feats=8, temperature=10000, normalize=True)
    mask = torch.zeros(1, 4, 5, dtype=torch.bool)
    pos = pe(mask)
    assert pos.shape == (1, 16, 4, 5)
    y, x = 2, 3  # 0-based pixel; normalised position = (index + 1) / size * 2pi
    ny, nx = (y + 1) / 4 * 2 * math.pi, (x + 1) / 5 * 2 * math.pi
    # channel 2k: sin(p / T^(2k/F)); channel 2k+1: cos of the same frequency
    for k in range(4):
        f = 10000 ** (2 * k / 8)
        assert math.isclose(pos[0, 2 * k, y, x].item(), math.sin(ny / f), abs_tol=1e-5)
        assert math.isclose(pos[0, 2 * k + 1, y, x].item(), math.cos(ny / f), abs_tol=1e-5)
        assert math.isclose(pos[0, 8 + 2 * k, y, x].item(), math.sin(nx / f), abs_tol=1e-5)
        assert math.isclose(pos[0, 8 + 2 * k + 1, y, x].item(), math.cos(nx / f), abs_tol=1e-5)


def test_padding_does_not_change_valid_region():
    pe = PositionEmbeddingSine(num_pos_feats=16)
    alone = pe(torch.zeros(1, 3, 4, dtype=torch.bool))
    mask = torch.ones(1, 6, 9, dtype=torch.bool)
    mask[0, :3, :4] = False
    padded = pe(mask)
    torch.testing.assert_close(padded[:, :, :3, :4], alone)


def test_unnormalised_positions_are_pixel_counts():
    pe = PositionEmbeddingSine(num_pos_feats=2, normalize=False)
    pos = pe(torch.zeros(1, 3, 3, dtype=torch.bool))
    # k = 0: frequency 1 -> sin(row + 1) in channel 0
    torch.testing.assert_close(pos[0, 0, :, 0], torch.sin(torch.tensor([1.0, 2.0, 3.0])))
