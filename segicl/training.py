"""What each training stage optimises, wrapped as ONE nn.Module per stage around the whole SegICLModel
(DeepSpeed prepares one engine per model: ../shared/STACK.md). Each wrapper freezes what its stage
does not train."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segicl.model import SegICLModel


def set_stage1_trainable(model: SegICLModel) -> None:
    """Stage 1 trains the condition encoder and the decoder's ControlNet (+ UNet unless frozen)."""
    model.requires_grad_(False)
    model.decoder.controlnet.requires_grad_(True)
    model.decoder.unet.requires_grad_(not model.config.decoder.freeze_unet)
    model.condition_encoder.requires_grad_(True)


def set_stage2_trainable(model: SegICLModel) -> None:
    """Stage 2 trains the vision cross-attention, output queries, boundary embeddings, LoRA and projector
    (and, for presets whose base weights start random, the ViT and the LLM base too)."""
    model.requires_grad_(False)
    model.vision.resampler.requires_grad_(True)
    model.vision.backbone.requires_grad_(not model.config.vision.freeze_backbone)
    model.encoder.boundaries.requires_grad_(True)
    model.encoder.output_queries.requires_grad_(True)
    train_base = model.config.llm.train_base_model and not model.config.llm.load_in_4bit
    for name, parameter in model.encoder.llm.named_parameters():
        parameter.requires_grad_("lora_" in name or train_base)
    model.projector.requires_grad_(True)
    if model.example_gate is not None:
        model.example_gate.requires_grad_(True)


class Stage1Model(nn.Module):
    """Stage 1: reconstruct a mask from its own condition tokens."""

    def __init__(self, model: SegICLModel):
        super().__init__()
        self.model = model
        set_stage1_trainable(model)

    def forward(self, masks: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        tokens = self.model.condition_encoder(masks)
        noise_std = self.model.config.condition.train_noise
        if self.training and noise_std > 0:
            tokens = tokens + noise_std * torch.randn(tokens.shape, generator=generator, device=tokens.device)
        return self.model.decoder.training_loss(masks, tokens, generator)


class Stage2Model(nn.Module):
    """Stage 2: regress the frozen condition encoder's tokens of the target mask (MSE, SegICL eq. 5).

    Tokens whose mask patch holds foreground weigh `1 + foreground_weight` (FINDINGS.md: unweighted, the
    regression drifts toward the all-background code when a structure covers a few patches).
    With `decoder_loss_weight` > 0 the predicted tokens also go through the FROZEN decoder's stage-1 loss
    (reconstruct the query mask from them): the decoder was trained on teacher tokens plus small noise,
    and this term pulls the regression toward tokens the decoder actually reads correctly.
    """

    def __init__(self, model: SegICLModel, foreground_weight: float = 4.0, decoder_loss_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.foreground_weight = foreground_weight
        self.decoder_loss_weight = decoder_loss_weight
        model.use_inference_only_settings = False
        set_stage2_trainable(model)

    def token_weights(self, query_mask: torch.Tensor) -> torch.Tensor:
        """[B, M] weight per condition token: 1, or 1 + foreground_weight where its patch has foreground."""
        occupied = F.max_pool2d(query_mask, self.model.config.condition.patch_size).flatten(1)
        return 1.0 + self.foreground_weight * occupied

    def forward(self, text_ids, text_mask, example_images, example_masks, example_valid, query_image, query_mask,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        predicted = self.model.condition_tokens(text_ids, text_mask, example_images, example_masks,
                                                example_valid, query_image)
        self.model.condition_encoder.eval()
        with torch.no_grad():
            target = self.model.condition_encoder(query_mask)
        error = (predicted - target).pow(2).mean(dim=-1)
        weights = self.token_weights(query_mask)
        losses = {"loss": (error * weights).sum() / weights.sum(), "mse": error.mean().detach()}
        if self.decoder_loss_weight > 0:
            decoded = self.model.decoder.training_loss(query_mask, predicted, generator)["loss"]
            losses["decoder"] = decoded.detach()
            losses["loss"] = losses["loss"] + self.decoder_loss_weight * decoded
        return losses


class CrossConvTraining(nn.Module):
    """The in-context module (`segicl.incontext.CrossConvNet`) alone: MONAI's Dice + cross-entropy loss of the
    query mask it predicts from the examples (the UniverSeg paper trains with soft Dice; the cross-entropy term
    keeps small structures from collapsing to empty early on)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        from monai.losses import DiceCELoss

        self.network = network
        self.criterion = DiceCELoss(sigmoid=True)

    def forward(self, example_images, example_masks, example_valid, query_image, query_mask,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        logits = self.network(query_image, example_images, example_masks, example_valid)
        return {"loss": self.criterion(logits, query_mask)}
