"""The in-context module: shapes, padding slots left out, bad input refused, bit-identical reload, it learns."""
import pytest
import torch

from segicl.config import CrossConvConfig
from segicl.incontext import CrossConvNet
from segicl.training import CrossConvTraining

from .conftest import random_masks

SMALL = CrossConvConfig(image_size=32, widths=(8, 8, 8))


def inputs(batch: int = 2, k: int = 3, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 1, size, size, generator=generator),
            torch.rand(batch, k, 1, size, size, generator=generator),
            random_masks(batch * k, size, seed).view(batch, k, 1, size, size),
            torch.ones(batch, k, dtype=torch.bool))


def test_logits_have_the_query_shape_and_the_paper_size():
    network = CrossConvNet(SMALL)
    assert network(*inputs()).shape == (2, 1, 32, 32)
    full = CrossConvNet(CrossConvConfig())
    assert 0.25e6 < sum(p.numel() for p in full.parameters()) < 0.35e6  # UniverSeg-sized for 4 scales of 32


def test_invalid_example_slots_are_left_out():
    network = CrossConvNet(SMALL).eval()
    query, images, masks, valid = inputs(batch=1, k=3)
    padded_valid = valid.clone()
    padded_valid[0, 2] = False
    with torch.no_grad():
        padded = network(query, images, masks, padded_valid)
        alone = network(query, images[:, :2], masks[:, :2], valid[:, :2])
        other = network(query, images, torch.flip(masks, dims=[-1]), valid)
    torch.testing.assert_close(padded, alone)
    assert not torch.allclose(padded, other)


@pytest.mark.parametrize("change, message", [
    (lambda q, i, m, v: (q[:, :, :16], i, m, v), "query image must have shape"),
    (lambda q, i, m, v: (q, i[:1], m, v), "example images must have shape"),
    (lambda q, i, m, v: (q, i, m, v[:, :2]), "example_valid must have shape"),
    (lambda q, i, m, v: (q, i, m, torch.zeros_like(v)), "at least one example"),
])
def test_bad_input_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        CrossConvNet(SMALL)(*change(*inputs()))


def test_config_refuses_a_size_the_scales_cannot_halve():
    with pytest.raises(ValueError, match="divisible"):
        CrossConvConfig(image_size=36, widths=(8, 8, 8, 8)).validate()


def test_save_and_load_are_bit_identical(tmp_path):
    network = CrossConvNet(SMALL)
    network.save_pretrained(tmp_path / "crossconv")
    loaded = CrossConvNet.from_pretrained(tmp_path / "crossconv")
    assert loaded.config == network.config
    with torch.no_grad():
        assert torch.equal(network.eval()(*inputs()), loaded(*inputs()))
    with pytest.raises(FileNotFoundError, match="no CrossConv model"):
        CrossConvNet.from_pretrained(tmp_path / "nothing")


def test_it_learns_to_carry_the_example_mask_to_a_shifted_query():
    """Each example is the query shifted by a few pixels: the answer is in the examples, not in the query alone."""
    torch.manual_seed(0)
    stage = CrossConvTraining(CrossConvNet(SMALL))
    optimizer = torch.optim.Adam(stage.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        masks = random_masks(4, 32, seed=step)
        query_image = masks * 0.8 + 0.1 * torch.rand(4, 1, 32, 32)
        shifted = torch.roll(masks, shifts=2, dims=-1)
        examples = (torch.roll(query_image, shifts=2, dims=-1)[:, None], shifted[:, None])
        loss = stage(*examples, torch.ones(4, 1, dtype=torch.bool), query_image, masks)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
