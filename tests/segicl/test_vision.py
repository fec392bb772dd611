import json

import pytest
import torch
from safetensors.torch import save_file

from segicl.config import VisionTowerConfig
from segicl.vision import VisionTower


def test_images_and_masks_become_fixed_token_counts():
    tower = VisionTower(VisionTowerConfig(), out_dim=96)
    assert tower(torch.rand(2, 1, 64, 64)).shape == (2, 16, 96)
    assert tower(torch.rand(3, 3, 64, 64)).shape == (3, 16, 96)
    assert tower(torch.rand(1, 1, 100, 80)).shape == (1, 16, 96)  # resized to the tower's input size


@pytest.mark.parametrize("images, message", [
    (torch.rand(2, 64, 64), "\\[B, 1 or 3, H, W\\]"),
    (torch.rand(1, 2, 64, 64), "\\[B, 1 or 3, H, W\\]"),
    (torch.full((1, 1, 64, 64), float("nan")), "NaN"),
])
def test_bad_images_refused(images, message):
    with pytest.raises(ValueError, match=message):
        VisionTower(VisionTowerConfig(), out_dim=32)(images)


def test_loads_a_local_open_clip_checkpoint(tmp_path):
    """The full preset's loader (open_clip architecture + local checkpoint file) on a tiny checkpoint."""
    import open_clip

    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    model_config = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}
    (config_dir / "tiny-test-vit.json").write_text(json.dumps(model_config))
    open_clip.add_model_config(config_dir)
    reference = open_clip.create_model("tiny-test-vit", pretrained=None)
    checkpoint = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, checkpoint)

    tower = VisionTower(VisionTowerConfig(image_size=32, open_clip_model="tiny-test-vit", checkpoint=str(checkpoint),
                                          freeze_backbone=True, num_tokens=8), out_dim=16)
    for name, value in reference.visual.state_dict().items():
        assert torch.equal(tower.backbone.state_dict()[name], value), name
    assert not any(p.requires_grad for p in tower.backbone.parameters())
    assert tower(torch.rand(2, 1, 32, 32)).shape == (2, 8, 16)
    with pytest.raises(FileNotFoundError, match="open_clip checkpoint not found"):
        VisionTower(VisionTowerConfig(open_clip_model="tiny-test-vit", checkpoint=str(tmp_path / "no.pt")), 16)
