import numpy as np
import pytest

from mvg_head.colouring import colour_table, decode, encode, palette


def test_palette():
    colours = palette(4)
    assert colours.shape == (63, 3)
    assert not (colours == 0).all(axis=1).any()  # black is the background


@pytest.mark.parametrize("mode", ["random", "predefined"])
def test_encode_decode_round_trip(mode):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(32, 32))
    class_ids = [1, 2, 3]
    table = colour_table([f"tissue:{c}" for c in class_ids], mode, rng)
    assert len({tuple(c) for c in table}) == 3
    rgb = encode(labels, class_ids, table)
    assert rgb.shape == (3, 32, 32)
    assert np.array_equal(decode(rgb, class_ids, table), labels)
    noisy = rgb + rng.normal(0, 0.05, rgb.shape).astype(np.float32)  # decoded to the nearest table colour
    assert np.array_equal(decode(noisy, class_ids, table), labels)


def test_random_colours_change_per_episode_predefined_do_not():
    keys = ["aal/Hippocampus_L"]
    drawn = {tuple(colour_table(keys, "random", np.random.default_rng(s))[0]) for s in range(20)}
    assert len(drawn) > 5
    fixed = {tuple(colour_table(keys, "predefined", np.random.default_rng(s))[0]) for s in range(5)}
    assert len(fixed) == 1


def test_binary_is_white():
    table = colour_table(["a"], "binary")
    assert table.tolist() == [[1.0, 1.0, 1.0]]
    labels = np.array([[0, 1], [1, 0]])
    assert np.array_equal(decode(encode(labels, [1], table), [1], table), labels)


def test_more_classes_than_colours_refused():
    with pytest.raises(ValueError, match="70 classes but the palette has only 63"):
        colour_table([str(i) for i in range(70)], "random", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown colouring"):
        colour_table(["a"], "rainbow", np.random.default_rng(0))
