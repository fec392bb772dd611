"""The in-context module: a UniverSeg-style cross-convolution network, written from the UniverSeg paper
(Butoi et al., ICCV 2023, section 3) for this project's 1-channel slices.

The query and each example (image, mask) pair interact by cross-convolution at every scale: a convolution of the
channel-wise concatenation of the query's and one example's features, whose outputs are averaged over the examples
to update the query and kept per example to update that example. An encoder of such blocks with max-pooling between
scales, a decoder of them with bilinear upsampling and skip connections, and a 1x1 convolution give the query's mask
logits. Trained alone (`stages/crossconv_train.py`) it is the UniverSeg-style peer of `segicl bench quality`;
inside SegICL (`SegICLConfig.prior_source = "crossconv"`) its mask is the example prior that the LLM gates.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from segicl_data.model_folders import MODEL_CONFIGS, WEIGHTS_NAME, check_model_folder
from segicl.config import CrossConvConfig

CONFIG_NAME = MODEL_CONFIGS["CrossConv"]


def _conv(in_channels: int, out_channels: int, negative_slope: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(negative_slope))


def _per_example(function, tensor: torch.Tensor) -> torch.Tensor:
    """Apply a [N, C, H, W] function to [B, K, C, H, W] by folding K into the batch."""
    batch, k = tensor.shape[:2]
    return function(tensor.flatten(0, 1)).unflatten(0, (batch, k))


class CrossBlock(nn.Module):
    """One scale: CrossConv(query, example_i) for every example, then one convolution for the query (on the mean
    over the valid examples) and one for each example (on its own pair's output)."""

    def __init__(self, query_channels: int, example_channels: int, width: int, negative_slope: float):
        super().__init__()
        self.cross = _conv(query_channels + example_channels, width, negative_slope)
        self.query = _conv(width, width, negative_slope)
        self.example = _conv(width, width, negative_slope)

    def forward(self, query: torch.Tensor, examples: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = examples.shape[1]
        pairs = torch.cat([query[:, None].expand(-1, k, -1, -1, -1), examples], dim=2)
        joint = _per_example(self.cross, pairs)
        weights = valid[:, :, None, None, None].to(joint.dtype)
        fused = (joint * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.query(fused), _per_example(self.example, joint)


class CrossConvNet(nn.Module):
    """query [B, 1, S, S] + examples ([B, K, 1, S, S] images and binary masks, `valid` [B, K]) -> logits [B, 1, S, S].

    Each example enters as 2 channels (its image and its mask mapped to -1/+1). Invalid example slots (padding
    of a batch with different k) are left out of every average; each sample needs at least one valid example.
    """

    def __init__(self, config: CrossConvConfig):
        super().__init__()
        self.config = config.validate()
        widths, slope = config.widths, config.negative_slope
        self.down = nn.ModuleList()
        query_channels, example_channels = 1, 2
        for width in widths:
            self.down.append(CrossBlock(query_channels, example_channels, width, slope))
            query_channels = example_channels = width
        self.up = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(CrossBlock(query_channels + width, example_channels + width, width, slope))
            query_channels = example_channels = width
        self.head = nn.Conv2d(query_channels, 1, 1)

    def forward(self, query_image: torch.Tensor, example_images: torch.Tensor, example_masks: torch.Tensor,
                example_valid: torch.Tensor) -> torch.Tensor:
        check_inputs(self.config.image_size, query_image, example_images, example_masks, example_valid)
        query = query_image
        examples = torch.cat([example_images, example_masks * 2.0 - 1.0], dim=2)
        skips = []
        for index, block in enumerate(self.down):
            query, examples = block(query, examples, example_valid)
            if index < len(self.down) - 1:
                skips.append((query, examples))
                query, examples = F.max_pool2d(query, 2), _per_example(lambda x: F.max_pool2d(x, 2), examples)
        for block, (query_skip, example_skip) in zip(self.up, reversed(skips)):
            size = query_skip.shape[-2:]
            grow = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
            query = torch.cat([grow(query), query_skip], dim=1)
            examples = torch.cat([_per_example(grow, examples), example_skip], dim=2)
            query, examples = block(query, examples, example_valid)
        return self.head(query)

    @torch.no_grad()
    def probabilities(self, query_image: torch.Tensor, example_images: torch.Tensor, example_masks: torch.Tensor,
                      example_valid: torch.Tensor) -> torch.Tensor:
        """The foreground probability [B, 1, S, S]."""
        return torch.sigmoid(self.forward(query_image, example_images, example_masks, example_valid))

    @torch.no_grad()
    def predict(self, query_image: torch.Tensor, example_images: torch.Tensor, example_masks: torch.Tensor,
                example_valid: torch.Tensor) -> torch.Tensor:
        """The binary mask [B, 1, S, S]: probability > 0.5."""
        return (self.forward(query_image, example_images, example_masks, example_valid) > 0).to(query_image.dtype)

    def save_pretrained(self, folder: Path | str) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=1))
        save_file({name: value.detach().cpu().contiguous() for name, value in self.state_dict().items()},
                  folder / WEIGHTS_NAME)
        return folder

    @classmethod
    def from_pretrained(cls, folder: Path | str) -> "CrossConvNet":
        folder = Path(folder)
        check_model_folder(folder, "CrossConv")
        network = cls(CrossConvConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text())))
        network.load_state_dict(load_file(folder / WEIGHTS_NAME))
        return network.eval()


def check_inputs(size: int, query_image: torch.Tensor, example_images: torch.Tensor, example_masks: torch.Tensor,
                 example_valid: torch.Tensor) -> None:
    """Refuse shapes the network cannot read and samples without a valid example, naming the problem."""
    if query_image.ndim != 4 or query_image.shape[1:] != (1, size, size):
        raise ValueError(f"query image must have shape [B, 1, {size}, {size}], got {tuple(query_image.shape)}")
    batch = query_image.shape[0]
    for name, tensor in (("example images", example_images), ("example masks", example_masks)):
        if tensor.ndim != 5 or tensor.shape[0] != batch or tensor.shape[2:] != (1, size, size):
            raise ValueError(f"{name} must have shape [{batch}, K, 1, {size}, {size}], got {tuple(tensor.shape)}")
    if example_valid.shape != example_images.shape[:2]:
        raise ValueError(f"example_valid must have shape {tuple(example_images.shape[:2])}, "
                         f"got {tuple(example_valid.shape)}")
    if not example_valid.any(dim=1).all():
        raise ValueError("the cross-convolution network needs at least one example per query (k >= 1)")
