import pytest
import torch

from mvg_head.canvas import block_causal_mask, block_masking, from_canvas, image_tokens, to_canvas, token_images


@pytest.mark.parametrize("pairs", [2, 3])
def test_canvas_layout_and_inverse(pairs):
    images = torch.rand(2, 2 * pairs, 3, 16, 16)
    canvas = to_canvas(images)
    assert canvas.shape == (2, 3, 16 * pairs, 32)
    # pair i on row i: image left, label right (k = 1: the paper's 2x2 square)
    for i in range(pairs):
        assert torch.equal(canvas[:, :, 16 * i:16 * (i + 1), :16], images[:, 2 * i])
        assert torch.equal(canvas[:, :, 16 * i:16 * (i + 1), 16:], images[:, 2 * i + 1])
    assert torch.equal(from_canvas(canvas, 16), images)


def test_token_images_match_the_canvas():
    index = token_images(pairs=2, grid=2).reshape(4, 4)
    assert index.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    tokens = torch.arange(16.0).reshape(1, 16, 1)
    maps = image_tokens(tokens, pairs=2, grid=2)  # [1, 4, 1, 2, 2]
    assert maps[0, 1, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]]


def test_bad_sentences_refused():
    with pytest.raises(ValueError, match="even number"):
        to_canvas(torch.rand(1, 3, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 2\(k\+1\)"):
        to_canvas(torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match="canvas"):
        from_canvas(torch.rand(1, 3, 20, 32), 16)


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("label_probability", [0.0, 1.0])
@pytest.mark.parametrize("labels_only", [True, False])
def test_block_masking_ratio(ratio, label_probability, labels_only):
    generator = torch.Generator().manual_seed(0)
    images = token_images(2, 8)
    for _ in range(20):
        mask = block_masking(2, 8, ratio, generator, min_block=4, query_label_probability=label_probability,
                             labels_only=labels_only)
        assert mask.shape == (256,)
        maskable = 128 if labels_only else 256
        assert int(mask.sum()) == round(ratio * maskable)
        if labels_only:
            assert not mask[images % 2 == 0].any()  # input images stay visible
        if label_probability == 1.0:
            assert mask[images == 3].all()


def test_block_masking_is_blockwise():
    """Masked patches come in blocks: most masked patches have a masked 4-neighbour."""
    mask = block_masking(2, 8, 0.5, torch.Generator().manual_seed(1), labels_only=False).reshape(16, 16)
    padded = torch.nn.functional.pad(mask.float()[None, None], (1, 1, 1, 1))[0, 0]
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    assert (neighbours[mask] > 0).float().mean() > 0.9


def test_block_causal_mask_pattern():
    allowed = block_causal_mask(pairs=2, grid=1)  # one token per image
    assert allowed.tolist() == [[True, False, False, False], [True, True, False, False],
                                [True, True, True, False], [True, True, True, True]]
