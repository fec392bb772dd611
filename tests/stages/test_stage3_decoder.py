"""Stage 3: the decoder learns from the encoder's own condition; everything else stays as it was."""
import pytest
import torch

from segicl.model import SegICLModel
from segicl.training import Stage3Model
from segicl_stages.common import TrainingArguments, episode_batches, train
from tests.stages.conftest import REPO, fresh_model, mean_loss


def test_stage3_trains_the_decoder_alone_and_its_loss_falls(dataset, tokenizer, tmp_path):
    model = fresh_model(tokenizer)
    model.add_pixel_inputs(("prior", "image"))
    frozen = ("vision.", "encoder.", "projector.", "example_gate.", "condition_encoder.")
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(frozen)}
    args = TrainingArguments(output_dir=tmp_path, steps=24, batch_size=4, learning_rate=1e-3, warmup_steps=3,
                             log_every=1, checkpoint_every=100)
    train(Stage3Model(model), episode_batches(model, dataset, 3, 16, 4, seed=0), args)
    assert mean_loss(tmp_path, first=False) < 0.8 * mean_loss(tmp_path, first=True)
    state = model.state_dict()
    for name, value in before.items():
        assert torch.equal(state[name], value), f"stage 3 changed a frozen part: {name}"
    new_channels = model.decoder.controlnet.controlnet_cond_embedding.conv_in.weight[:, 16:]
    assert new_channels.abs().sum() > 0  # the pixel inputs were trained in from zero


def test_stage3_switches_pixel_inputs_on_for_the_shipped_weights(dataset, tmp_path, capsys):
    from segicl_stages.stage3_decoder import main

    assert main(["--init", str(REPO / "weights" / "segicl-tiny"), "--pixel-inputs", "prior", "image",
                 "--output-dir", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--warmup-steps", "1",
                 "--log-every", "1"]) == 0
    assert "stage 3: 2 steps in" in capsys.readouterr().out
    model = SegICLModel.from_pretrained(tmp_path / "run" / "model")
    assert model.config.decoder.pixel_inputs == ("prior", "image") and model.config.prior_source == "crossconv"


def test_stage3_refuses_an_unknown_pixel_input_in_one_line(capsys):
    from segicl_stages.stage3_decoder import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--init", "x", "--pixel-inputs", "edges"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --pixel-inputs: invalid choice: 'edges'" in err
