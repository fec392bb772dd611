import pytest
import torch

from segicl.condition import ConditionEncoder
from segicl.config import ConditionEncoderConfig

from .conftest import random_masks


def test_tokens_shape_and_map_layout():
    encoder = ConditionEncoder(ConditionEncoderConfig())
    tokens = encoder(random_masks(3))
    assert tokens.shape == (3, 256, 16)
    spatial = encoder.to_map(tokens)
    assert spatial.shape == (3, 16, 16, 16)
    # token (row 2, column 5) of the grid sits at map position [:, :, 2, 5]
    torch.testing.assert_close(spatial[:, :, 2, 5], tokens[:, 2 * 16 + 5])


def test_tokens_are_local_to_their_patch():
    encoder = ConditionEncoder(ConditionEncoderConfig())
    empty = torch.zeros(1, 1, 64, 64)
    one_patch = empty.clone()
    one_patch[0, 0, 8:12, 20:24] = 1  # patch row 2, column 5
    changed = (encoder(one_patch) - encoder(empty)).abs().sum(-1)[0]
    assert changed.nonzero().flatten().tolist() == [2 * 16 + 5]


@pytest.mark.parametrize("mask, message", [
    (torch.zeros(2, 64, 64), "shape \\[B, 1, 64, 64\\]"),
    (torch.zeros(2, 1, 32, 32), "shape \\[B, 1, 64, 64\\]"),
    (torch.full((1, 1, 64, 64), 0.5), "must be binary"),
    (torch.full((1, 1, 64, 64), float("nan")), "NaN"),
])
def test_bad_masks_refused(mask, message):
    with pytest.raises(ValueError, match=message):
        ConditionEncoder(ConditionEncoderConfig())(mask)
