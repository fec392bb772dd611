import pytest
import torch

from segicl_stages.checkpoint import load_checkpoint, save_checkpoint


def adam_state() -> tuple[torch.nn.Linear, dict]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return layer, optimizer.state_dict()


def test_a_checkpoint_reloads_bit_identically_with_its_optimizer(tmp_path):
    layer, optimizer_state = adam_state()
    save_checkpoint(tmp_path / "checkpoint", layer.state_dict(), {"step": 7}, optimizer_state)
    model_state, trainer_state, reloaded = load_checkpoint(tmp_path / "checkpoint")
    assert trainer_state == {"step": 7}
    for name, value in layer.state_dict().items():
        assert torch.equal(model_state[name], value)
    for key, value in optimizer_state["state"][0].items():
        assert torch.equal(torch.as_tensor(reloaded["state"][0][key]), torch.as_tensor(value))
    assert reloaded["param_groups"][0]["lr"] == 0.1


def test_saving_again_replaces_the_checkpoint_and_leaves_no_staging_folder(tmp_path):
    layer, _ = adam_state()
    save_checkpoint(tmp_path / "checkpoint", layer.state_dict(), {"step": 1})
    save_checkpoint(tmp_path / "checkpoint", layer.state_dict(), {"step": 2})
    assert load_checkpoint(tmp_path / "checkpoint")[1] == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_folder_without_weights_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .* \\(model.safetensors missing\\)"):
        load_checkpoint(tmp_path)
