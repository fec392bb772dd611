"""The MVG model: a plain ViT over the canvas and a light head of two conv layers fed by four feature maps.

One class made of small single-purpose methods, MAE style: `normalize`, `patchify`, `forward_encoder`,
`forward_head`, `forward_masked`, `forward_autoregressive`, `predict`. Encoder parameter names are MAE's
(`patch_embed.proj.weight`, `blocks.N.attn.qkv.weight`, `pos_embed`, `norm.weight`), built from timm's
`PatchEmbed` and `Block`, so a real `mae_pretrain_vit_large.pth` loads with `load_mae_checkpoint`.

The cls token of MAE is not used: with block-causal attention a global token would carry later images back to
earlier ones. Its position embedding is dropped on loading.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from mvg_head.canvas import block_causal_mask, block_masking, check_sentence, image_tokens, to_canvas
from mvg_head.config import MVGConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "mvg_config.json"
MODES = ("masked", "autoregressive")
SMOOTH_L1_BETA = 0.01  # Painter's smooth-L1 threshold, in normalised pixel units


@dataclass
class MVGOutput:
    """What a training forward returns.

    Attributes:
        loss: smooth-L1 over the supervised pixels (masked patches, or every label image), see `pixel_weights`.
        prediction: predicted images [B, n, 3, H, W] in normalised units (masked: image j at slot j;
            autoregressive: label i at slot 2i + 1, predicted from the features of image 2i).
        supervised: bool [B, n, 1, H, W], the pixels the loss covers.
    """

    loss: torch.Tensor
    prediction: torch.Tensor
    supervised: torch.Tensor


def sincos_position_embedding(width: int, rows: int, cols: int) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine embedding [rows * cols, width] (half the channels per axis)."""
    if width % 4:
        raise ValueError(f"width must be a multiple of 4 for the 2-D sin-cos embedding, got {width}")
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4.0))
    grid_y, grid_x = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                                    indexing="ij")
    parts = []
    for positions in (grid_y.reshape(-1), grid_x.reshape(-1)):
        angles = positions[:, None] * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


class ConvHead(nn.Module):
    """Four feature maps (each normalised) concatenated -> 3x3 conv -> GELU -> 1x1 conv -> pixels (pixel shuffle)."""

    def __init__(self, width: int, channels: int, patch_size: int, out_chans: int = 3):
        super().__init__()
        self.norms = nn.ModuleList([nn.LayerNorm(width, eps=1e-6) for _ in range(4)])
        self.conv1 = nn.Conv2d(4 * width, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, out_chans * patch_size**2, kernel_size=1)
        self.patch_size = patch_size

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """maps: four [M, D, g, g] -> pixels [M, 3, g p, g p]."""
        normed = [norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for norm, m in zip(self.norms, maps)]
        hidden = F.gelu(self.conv1(torch.cat(normed, dim=1)))
        return F.pixel_shuffle(self.conv2(hidden), self.patch_size)


class MVGModel(nn.Module):
    def __init__(self, config: MVGConfig):
        super().__init__()
        self.config = config.validate()
        c = config
        self.patch_embed = PatchEmbed(img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_chans,
                                      embed_dim=c.width, strict_img_size=False)
        # Position inside a slot (shared by every image: "the same place in another image" is one embedding away)
        # plus a learned embedding of the slot in the sentence (Painter's segment embeddings, one per image).
        self.pos_embed = nn.Parameter(sincos_position_embedding(c.width, c.grid, c.grid)[None])
        self.slot_embed = nn.Parameter(torch.zeros(1, 2 * (c.max_prompts + 1), c.width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.blocks = nn.ModuleList([Block(c.width, c.heads, c.mlp_ratio, qkv_bias=True,
                                           norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(c.width, eps=1e-6)
        self.head = ConvHead(c.width, c.head_channels, c.patch_size, c.in_chans)
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(1, 1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.slot_embed, std=0.02)
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, config: MVGConfig) -> "MVGModel":
        model = cls(config)
        if config.mae_checkpoint:
            from mvg_head.mae import load_mae_checkpoint

            load_mae_checkpoint(model, config.mae_checkpoint)
        return model

    # ------------------------------------------------------------------ pieces
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[B, n, 3, H, W] in [0, 1] -> normalised units."""
        return (images - self.pixel_mean) / self.pixel_std

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.pixel_std + self.pixel_mean

    def check_input(self, images: torch.Tensor) -> int:
        """Number of pairs of a sentence in [0, 1] units, after checking its shape against the config."""
        _, pairs = check_sentence(images)
        c = self.config
        if tuple(images.shape[2:]) != (c.in_chans, c.image_size, c.image_size):
            raise ValueError(f"images must be [B, n, {c.in_chans}, {c.image_size}, {c.image_size}] for this model, "
                             f"got {tuple(images.shape)}")
        if pairs - 1 > c.max_prompts:
            raise ValueError(f"{pairs - 1} prompt pairs given; this model takes at most {c.max_prompts}")
        return pairs

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Sentence [B, n, 3, H, W] (normalised) -> canvas tokens [B, N, D] with position embeddings not yet added."""
        return self.patch_embed(to_canvas(images))

    def position_embedding(self, pairs: int) -> torch.Tensor:
        """[1, N, D] in canvas token order: the in-slot position embedding plus the embedding of each token's slot."""
        from mvg_head.canvas import token_images

        grid = self.config.grid
        local = self.pos_embed.reshape(1, grid, 1, grid, -1).expand(-1, -1, 2, -1, -1)  # rows, slot column, cols
        local = local.reshape(1, grid, 2 * grid, -1).repeat(1, pairs, 1, 1).reshape(1, pairs * 2 * grid**2, -1)
        return local + self.slot_embed[:, token_images(pairs, grid)]

    def forward_encoder(self, images: torch.Tensor, token_mask: torch.Tensor | None = None,
                        attn_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The four feature maps [B, N, D] (canvas token order) of a normalised sentence.

        token_mask [B, N] (True = replace by the mask token); attn_mask [N, N] (True = may attend).
        """
        tokens = self.patchify(images)
        if token_mask is not None:
            tokens = torch.where(token_mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.position_embedding(tokens.shape[1] // (2 * self.config.grid**2))
        features = []
        wanted = self.config.blocks_for_head
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, attn_mask=attn_mask)
            if index in wanted:
                features.append(self.norm(tokens) if index == self.config.depth - 1 else tokens)
        return features

    def forward_head(self, features: list[torch.Tensor], pairs: int) -> torch.Tensor:
        """Four [B, N, D] -> one predicted image per sentence slot [B, n, 3, H, W] (normalised units)."""
        grid = self.config.grid
        maps = [image_tokens(f, pairs, grid) for f in features]
        batch, n = maps[0].shape[:2]
        pixels = self.head([m.reshape(batch * n, *m.shape[2:]) for m in maps])
        return pixels.reshape(batch, n, *pixels.shape[1:])

    def token_mask_to_pixels(self, token_mask: torch.Tensor, pairs: int) -> torch.Tensor:
        """[B, N] canvas-token mask -> [B, n, 1, H, W] pixel mask per sentence slot."""
        c = self.config
        grid_mask = image_tokens(token_mask[..., None].float(), pairs, c.grid)  # [B, n, 1, g, g]
        return grid_mask.repeat_interleave(c.patch_size, -1).repeat_interleave(c.patch_size, -2).bool()

    def pixel_weights(self, images: torch.Tensor, supervised: torch.Tensor) -> torch.Tensor:
        """Loss weights [B, n, 1, H, W]: the supervised pixels, foreground and background balanced per image.

        With `balance_foreground`, the non-black supervised pixels of each image carry half of its weight and the
        black ones the other half (a structure of 2% of the slice otherwise teaches "all background" first: measured
        here, Dice 0.0 after 250 segmentation steps without it). Without it, every supervised pixel weighs 1.
        """
        weights = supervised.float()
        if not self.config.balance_foreground:
            return weights
        foreground = (images.amax(dim=2, keepdim=True) > 0.02).float() * weights
        background = weights - foreground
        n_fg = foreground.sum(dim=(-1, -2), keepdim=True)
        n_bg = background.sum(dim=(-1, -2), keepdim=True)
        both = (n_fg > 0) & (n_bg > 0)
        balanced = 0.5 * foreground / n_fg.clamp_min(1) + 0.5 * background / n_bg.clamp_min(1)
        plain = weights / (n_fg + n_bg).clamp_min(1)
        return torch.where(both, balanced, plain) * self.config.image_size**2

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Smooth-L1 (Painter's beta) averaged over pixels and channels with the given pixel weights."""
        per_pixel = F.smooth_l1_loss(prediction, target, reduction="none", beta=SMOOTH_L1_BETA)
        weight = weights.expand_as(per_pixel)
        return (per_pixel * weight).sum() / weight.sum().clamp_min(1e-6)

    # ------------------------------------------------------------------ training forms
    def random_token_mask(self, batch: int, pairs: int, generator: torch.Generator) -> torch.Tensor:
        c = self.config
        return torch.stack([block_masking(pairs, c.grid, c.mask_ratio, generator, c.min_block_patches,
                                          c.query_label_mask_probability, c.mask_labels_only) for _ in range(batch)])

    def forward_masked(self, images: torch.Tensor, generator: torch.Generator | None = None,
                       token_mask: torch.Tensor | None = None) -> MVGOutput:
        """Masked image modelling on the canvas: block-wise random masking, loss on the masked patches."""
        pairs = self.check_input(images)
        if token_mask is None:
            token_mask = self.random_token_mask(images.shape[0], pairs, generator or torch.Generator().manual_seed(0))
        target = self.normalize(images)
        prediction = self.forward_head(self.forward_encoder(target, token_mask=token_mask), pairs)
        supervised = self.token_mask_to_pixels(token_mask, pairs)
        loss = self.loss(prediction, target, self.pixel_weights(images, supervised))
        return MVGOutput(loss, prediction, supervised)

    def forward_autoregressive(self, images: torch.Tensor) -> MVGOutput:
        """Every label predicted from the images before it: block-causal attention, label i read at image 2i."""
        pairs = self.check_input(images)
        target = self.normalize(images)
        outputs = self.forward_head(self.forward_encoder(target, attn_mask=block_causal_mask(pairs, self.config.grid)),
                                    pairs)
        prediction = torch.zeros_like(outputs)
        prediction[:, 1::2] = outputs[:, 0::2]  # the output at X_i is the prediction of Y_i
        supervised = torch.zeros(images.shape[0], images.shape[1], 1, *images.shape[-2:], dtype=torch.bool,
                                 device=images.device)
        supervised[:, 1::2] = True
        loss = self.loss(prediction, target, self.pixel_weights(images, supervised))
        return MVGOutput(loss, prediction, supervised)

    def forward(self, images: torch.Tensor, mode: str = "autoregressive",
                generator: torch.Generator | None = None) -> MVGOutput:
        if mode == "masked":
            return self.forward_masked(images, generator)
        if mode == "autoregressive":
            return self.forward_autoregressive(images)
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: torch.Tensor, mode: str = "autoregressive") -> torch.Tensor:
        """The query label [B, 3, H, W] in [0, 1] units for a sentence whose last slot (Y) is ignored.

        masked: Y's tokens are all mask tokens (the paper's inference [P_x, P_y, X, Y^]); autoregressive: Y is read
        from the output at X under block-causal attention.
        """
        pairs = self.check_input(images)
        normalized = self.normalize(images)
        if mode == "masked":
            tokens = pairs * 2 * self.config.grid**2
            token_mask = torch.zeros(images.shape[0], tokens, dtype=torch.bool, device=images.device)
            token_mask[:, self._query_label_tokens(pairs)] = True
            output = self.forward_head(self.forward_encoder(normalized, token_mask=token_mask), pairs)[:, -1]
        elif mode == "autoregressive":
            mask = block_causal_mask(pairs, self.config.grid)
            output = self.forward_head(self.forward_encoder(normalized, attn_mask=mask), pairs)[:, -2]
        else:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        return self.denormalize(output[:, None])[:, 0].clamp(0.0, 1.0)

    def _query_label_tokens(self, pairs: int) -> torch.Tensor:
        from mvg_head.canvas import token_images

        return token_images(pairs, self.config.grid) == 2 * pairs - 1

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: Path | str) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / CONFIG_NAME)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS_NAME)
        return folder

    @classmethod
    def from_pretrained(cls, folder: Path | str) -> "MVGModel":
        """A saved model (float16 weights are cast back to float32); the MAE checkpoint is not re-read."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).exists():
            raise FileNotFoundError(f"no MVG model at {folder} ({CONFIG_NAME} missing)")
        config = MVGConfig.load(folder / CONFIG_NAME)
        model = cls(dataclasses.replace(config, mae_checkpoint=None))
        model.config = config
        state = load_file(folder / WEIGHTS_NAME)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{folder / WEIGHTS_NAME} does not match the config: missing {result.missing_keys[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]}")
        return model.eval()

    def num_parameters(self) -> int:
        return int(sum(np.prod(p.shape) for p in self.parameters()))
