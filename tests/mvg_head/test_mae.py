"""The MAE-checkpoint loader, on a tiny checkpoint written here in MAE's format (torch file with a "model" dict)."""
import pytest
import torch

from mvg_head.mae import interpolate_pos_embed, load_mae_checkpoint
from mvg_head.model import MVGModel
from tests.mvg_head.conftest import small_config


def write_mae_checkpoint(path, width=32, depth=4, patch=8, grid=4, decoder=True):
    """What facebookresearch/mae saves: encoder with cls token + (1 + G*G) position embeddings, and a decoder."""
    from timm.models.vision_transformer import Block
    from timm.layers import PatchEmbed

    torch.manual_seed(1)
    encoder = torch.nn.ModuleDict({"patch_embed": PatchEmbed(grid * patch, patch, 3, width),
                                   "blocks": torch.nn.ModuleList([Block(width, 2, 4.0, qkv_bias=True)
                                                                  for _ in range(depth)]),
                                   "norm": torch.nn.LayerNorm(width)})
    state = {k: torch.randn_like(v) for k, v in encoder.state_dict().items()}
    state["cls_token"] = torch.randn(1, 1, width)
    state["pos_embed"] = torch.randn(1, 1 + grid * grid, width)
    if decoder:
        state.update({"mask_token": torch.randn(1, 1, 16), "decoder_embed.weight": torch.randn(16, width),
                      "decoder_pos_embed": torch.randn(1, 1 + grid * grid, 16), "decoder_norm.weight": torch.ones(16)})
    torch.save({"model": state, "epoch": 1}, path)
    return state


def test_loads_encoder_and_interpolates_position_embeddings(tmp_path):
    state = write_mae_checkpoint(tmp_path / "mae.pth")
    model = MVGModel(small_config())
    report = load_mae_checkpoint(model, tmp_path / "mae.pth")
    own = model.state_dict()
    for key in ("patch_embed.proj.weight", "blocks.3.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "norm.weight"):
        assert torch.equal(own[key], state[key]), key
    assert own["pos_embed"].shape == (1, 8 * 8, 32)  # 4x4 grid -> the 8x8 grid of a 64 px slot
    assert "cls_token" in report.ignored and "decoder_embed.weight" in report.ignored
    assert report.not_in_checkpoint == []
    same = interpolate_pos_embed(state["pos_embed"], 4, 4)
    assert torch.equal(same, state["pos_embed"][:, 1:])


def test_from_config_reads_the_checkpoint(tmp_path):
    state = write_mae_checkpoint(tmp_path / "mae.pth")
    model = MVGModel.from_config(small_config(mae_checkpoint=str(tmp_path / "mae.pth")))
    assert torch.equal(model.blocks[1].attn.proj.weight, state["blocks.1.attn.proj.weight"])
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "mae.pth").unlink()  # the saved model no longer needs the checkpoint
    assert torch.equal(MVGModel.from_pretrained(tmp_path / "m").blocks[1].attn.proj.weight,
                       state["blocks.1.attn.proj.weight"])


def test_mismatched_or_missing_checkpoint_refused(tmp_path):
    write_mae_checkpoint(tmp_path / "wide.pth", width=64)
    with pytest.raises(ValueError, match="shape"):
        load_mae_checkpoint(MVGModel(small_config()), tmp_path / "wide.pth")
    with pytest.raises(FileNotFoundError):
        load_mae_checkpoint(MVGModel(small_config()), tmp_path / "none.pth")
    torch.save({"model": {"something": torch.zeros(1)}}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="no encoder weights"):
        load_mae_checkpoint(MVGModel(small_config()), tmp_path / "empty.pth")
