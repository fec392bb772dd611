import pytest
import torch


def sentence(batch=2, pairs=2, seed=0):
    """A visual sentence of random images [batch, 2 * pairs, 3, 64, 64]."""
    return torch.rand(batch, 2 * pairs, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def assert_labels_see_only_earlier_images(model, pairs: int = 3) -> None:
    """Under autoregressive training, label L is predicted from images 0 .. L - 1 only: perturbing label L itself
    or any later image leaves it unchanged, perturbing an earlier one changes it."""
    images = sentence(batch=1, pairs=pairs)
    with torch.no_grad():
        reference = model.forward_autoregressive(images).prediction
        for perturbed in range(2 * pairs):
            changed = images.clone()
            changed[:, perturbed] = torch.rand_like(changed[:, perturbed])
            prediction = model.forward_autoregressive(changed).prediction
            for label in range(1, 2 * pairs, 2):
                same = torch.allclose(prediction[:, label], reference[:, label], atol=1e-6)
                assert same == (label <= perturbed), (perturbed, label)


def assert_reloads_bit_identical(model, folder):
    """save_pretrained then from_pretrained: the same config, every tensor and both predictions bit-identical.
    Returns the reloaded model."""
    from mvg_head.model import MVGModel

    model.save_pretrained(folder)
    loaded = MVGModel.from_pretrained(folder)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    images = sentence(batch=1)
    for mode in ("autoregressive", "masked"):
        assert torch.equal(model.predict(images, mode), loaded.predict(images, mode))
    return loaded


def small_config(**overrides):
    """The tiny preset's slots (64 px, patch 8) with a much smaller ViT, for fast tests."""
    from mvg_head.config import tiny_config

    return tiny_config(**{"width": 32, "depth": 4, "heads": 2, "head_channels": 16, **overrides})


@pytest.fixture()
def small_model():
    from mvg_head.model import MVGModel

    torch.manual_seed(0)
    return MVGModel(small_config()).eval()


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tests share two cores with other work, where two threads thrash (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
