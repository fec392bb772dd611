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
from safetensors.torch import save_file
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from mvg_head.canvas import block_causal_mask, block_masking, check_sentence, image_tokens, to_canvas
from mvg_head.config import MVGConfig
from segicl_data.model_folders import MODEL_CONFIGS, WEIGHTS_NAME, check_model_folder, load_weights, reading_config

CONFIG_NAME = MODEL_CONFIGS["MVG"]
MODES = ("masked", "autoregressive")
SMOOTH_L1_BETA = 0.01  # Painter's smooth-L1 threshold, in normalised pixel units
COPY_TOLERANCE = 1e-4  # a label pixel this close to its input image's pixel ([0, 1] units) is a copy
FOREGROUND_LEVEL = 0.02  # a pixel is foreground (not black) when a channel exceeds this ([0, 1] units)


@dataclass
class MVGOutput:
    """What a training forward returns.

    Attributes:
        loss: smooth-L1 over the supervised pixels (masked patches, or every label image), see `pixel_weights`;
            with `pixel_skip`, plus that of the coarse prediction (`MVGConfig.coarse_loss_weight`).
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


def zero_started_refiner(in_channels: int, channels: int, out_channels: int) -> nn.Sequential:
    """Three full-resolution 3x3 conv layers (GELU between) whose last layer starts at zero: a head branch that
    changes nothing until trained."""
    refiner = nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=3, padding=1), nn.GELU(),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.GELU(),
        nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
    nn.init.zeros_(refiner[-1].weight)
    nn.init.zeros_(refiner[-1].bias)
    return refiner


class ConvHead(nn.Module):
    """Four feature maps (each normalised) concatenated -> 3x3 conv -> GELU -> 1x1 conv -> pixels (pixel shuffle).

    With `skip_channels` > 0 (`MVGConfig.pixel_skip`) the head also reads the input pixels at full resolution. The
    1x1 conv then emits, per pixel, the coarse prediction, a gate logit and `skip_channels` feature channels, and
    three full-resolution 3x3 conv layers over [coarse prediction, feature channels, input pixels] emit a correction
    and a local term of the gate logit. The gate blends the coarse prediction with the input pixels (copying the
    input is one gate away: denoising, inpainting outside the hole); its local term lets it close where the pixels
    say so (a filled hole), the correction adds what neither has (filtering, contrast changes). Both start at zero.
    The coarse prediction is also returned: an open gate starves it of gradient, so the model supervises it too
    (`MVGConfig.coarse_loss_weight`).
    """

    def __init__(self, width: int, channels: int, patch_size: int, out_chans: int = 3, skip_channels: int = 0):
        super().__init__()
        self.norms = nn.ModuleList([nn.LayerNorm(width, eps=1e-6) for _ in range(4)])
        self.conv1 = nn.Conv2d(4 * width, channels, kernel_size=3, padding=1)
        extra = 1 + skip_channels if skip_channels else 0  # the gate and the feature channels
        self.conv2 = nn.Conv2d(channels, (out_chans + extra) * patch_size**2, kernel_size=1)
        self.patch_size = patch_size
        self.out_chans = out_chans
        self.skip_channels = skip_channels
        if skip_channels:
            self.refine = zero_started_refiner(2 * out_chans + skip_channels, skip_channels, out_chans + 1)
        self.label_refine: nn.Sequential | None = None

    def add_label_refine(self) -> None:
        """The prompt-label skip (`MVGConfig.prompt_label_skip`): three full-resolution conv layers over [skip
        output, feature channels, input pixels, previous label] emitting an amount and a correction, both zero at
        the start (the last layer is zero-initialised), so adding it leaves the head's output unchanged."""
        self.label_refine = zero_started_refiner(3 * self.out_chans + self.skip_channels, self.skip_channels,
                                                 self.out_chans + 1)

    def forward(self, maps: list[torch.Tensor], pixels: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """maps: four [M, D, g, g]; pixels: [M, 3, g p, g p] (needed with skip channels); labels: [M, 3, g p, g p],
        the previous pair's label (needed with `label_refine`) -> (pixels [M, 3, g p, g p], the coarse prediction
        before the skips, or None without them)."""
        normed = [norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for norm, m in zip(self.norms, maps)]
        hidden = F.gelu(self.conv1(torch.cat(normed, dim=1)))
        upsampled = F.pixel_shuffle(self.conv2(hidden), self.patch_size)
        if not self.skip_channels:
            return upsampled, None
        if pixels is None:
            raise ValueError("this head has a pixel skip: pass the input pixels")
        coarse, gate, features = upsampled.split([self.out_chans, 1, self.skip_channels], dim=1)
        correction, local_gate = self.refine(torch.cat([coarse, features, pixels], dim=1)).split([self.out_chans, 1], 1)
        output = coarse + torch.sigmoid(gate + local_gate) * (pixels - coarse) + correction
        if self.label_refine is None:
            return output, coarse
        if labels is None:
            raise ValueError("this head has a prompt-label skip: pass the previous labels")
        refined = self.label_refine(torch.cat([output, features, pixels, labels], dim=1))
        label_correction, amount = refined.split([self.out_chans, 1], dim=1)
        return output + amount * (labels - output) + label_correction, coarse


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
        self.head = ConvHead(c.width, c.head_channels, c.patch_size, c.in_chans, c.skip_channels if c.pixel_skip else 0)
        if c.prompt_label_skip:
            self.head.add_label_refine()
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

    def add_prompt_label_skip(self) -> None:
        """Switch `MVGConfig.prompt_label_skip` on for a model trained without it (predictions unchanged until
        trained: the new layers start at zero)."""
        if self.head.label_refine is None:
            self.config = dataclasses.replace(self.config, prompt_label_skip=True).validate()
            self.head.add_label_refine()

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

    def forward_head(self, features: list[torch.Tensor], pairs: int, images: torch.Tensor | None = None,
                     token_mask: torch.Tensor | None = None, slots: list[int] | None = None, with_coarse: bool = False
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Four [B, N, D] -> one predicted image per sentence slot [B, n, 3, H, W] (normalised units).

        slots: the sentence slots to predict (default: all), [B, len(slots), 3, H, W]. With `pixel_skip` the head
        also reads `images` (the normalised sentence): each slot gets the pixels of its pair's input image, with the
        patches of `token_mask` blanked (they are what masked image modelling asks for). with_coarse: also return
        the head's coarse prediction before the skip (None without `pixel_skip`).
        """
        grid = self.config.grid
        slots = list(range(2 * pairs)) if slots is None else list(slots)
        maps = [image_tokens(f, pairs, grid)[:, slots] for f in features]
        batch, n = maps[0].shape[:2]
        pixels = labels = None
        if self.config.pixel_skip:
            visible = self.visible_images(images, pairs, token_mask)  # blanked once, read by both skips
            pixels = self.skip_pixels(visible, pairs, None)[:, slots].flatten(0, 1)
            if self.config.prompt_label_skip:
                labels = self.previous_labels(visible, pairs, None)[:, slots].flatten(0, 1)
        output, coarse = (None if t is None else t.reshape(batch, n, *t.shape[1:])
                          for t in self.head([m.flatten(0, 1) for m in maps], pixels, labels))
        return (output, coarse) if with_coarse else output

    def visible_images(self, images: torch.Tensor | None, pairs: int, token_mask: torch.Tensor | None
                       ) -> torch.Tensor:
        """The normalised sentence with the patches of `token_mask` blanked (0): what the skips may read."""
        if images is None:
            raise ValueError("pixel_skip: forward_head needs the sentence's images")
        if token_mask is not None:
            images = images.masked_fill(self.token_mask_to_pixels(token_mask, pairs), 0.0)
        return images

    def skip_pixels(self, images: torch.Tensor | None, pairs: int, token_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, n, 3, H, W]: for every slot the visible pixels of its pair's input image (normalised; masked = 0)."""
        return self.visible_images(images, pairs, token_mask)[:, 0::2].repeat_interleave(2, dim=1)

    def previous_labels(self, images: torch.Tensor | None, pairs: int, token_mask: torch.Tensor | None
                        ) -> torch.Tensor:
        """[B, n, 3, H, W]: for both slots of pair i the visible pixels of pair i-1's label (pair 0: blank, 0).

        Under block-causal attention the label of pair i-1 precedes X_i, so autoregressive training reads no
        future; in masked modelling a masked label patch stays blank here too."""
        labels = self.visible_images(images, pairs, token_mask)[:, 1::2]
        previous = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)
        return previous.repeat_interleave(2, dim=1)

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
        Then `copy_weight` (see `down_weight_copies`).
        """
        weights = supervised.float()
        if self.config.balance_foreground:
            weights = self.balance_foreground(images, weights)
        if self.config.copy_weight != 1.0:
            weights = self.down_weight_copies(images, weights)
        return weights

    def balance_foreground(self, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        foreground = (images.amax(dim=2, keepdim=True) > FOREGROUND_LEVEL).float() * weights
        background = weights - foreground
        n_fg = foreground.sum(dim=(-1, -2), keepdim=True)
        n_bg = background.sum(dim=(-1, -2), keepdim=True)
        both = (n_fg > 0) & (n_bg > 0)
        balanced = 0.5 * foreground / n_fg.clamp_min(1) + 0.5 * background / n_bg.clamp_min(1)
        plain = weights / (n_fg + n_bg).clamp_min(1)
        return torch.where(both, balanced, plain) * self.config.image_size**2

    def down_weight_copies(self, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Pixels of a label equal to their pair's input image (copies) weigh `copy_weight` times as much, each image
        keeping its total weight: what a task changes (an inpainted hole of 2-6% of the slice) then drives the loss.
        Pixels clipped at the top of the range are not counted as copies: measured, down-weighting them cost low-dose
        CT denoising (bone, clipped by the CT window in both the noisy and the clean image, was no longer kept white).
        """
        inputs = images[:, 0::2].repeat_interleave(2, dim=1)
        level = images.amax(dim=2, keepdim=True)
        unclipped = level < 1.0 - FOREGROUND_LEVEL
        copies = ((images - inputs).abs().amax(dim=2, keepdim=True) < COPY_TOLERANCE) & unclipped
        scaled = weights * torch.where(copies, self.config.copy_weight, 1.0)
        total = weights.sum(dim=(-1, -2), keepdim=True)
        return scaled * total / scaled.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-12)

    def supervised_loss(self, prediction: torch.Tensor, coarse: torch.Tensor | None, target: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor:
        """The loss of the prediction plus, with `pixel_skip`, `coarse_loss_weight` times that of the coarse one."""
        loss = self.loss(prediction, target, weights)
        if coarse is not None and self.config.coarse_loss_weight:
            loss = loss + self.config.coarse_loss_weight * self.loss(coarse, target, weights)
        return loss

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
        features = self.forward_encoder(target, token_mask=token_mask)
        prediction, coarse = self.forward_head(features, pairs, target, token_mask, with_coarse=True)
        supervised = self.token_mask_to_pixels(token_mask, pairs)
        loss = self.supervised_loss(prediction, coarse, target, self.pixel_weights(images, supervised))
        return MVGOutput(loss, prediction, supervised)

    def forward_autoregressive(self, images: torch.Tensor) -> MVGOutput:
        """Every label predicted from the images before it: block-causal attention, label i read at image 2i."""
        pairs = self.check_input(images)
        target = self.normalize(images)
        features = self.forward_encoder(target, attn_mask=block_causal_mask(pairs, self.config.grid))
        output, coarse = self.forward_head(features, pairs, target, slots=range(0, 2 * pairs, 2), with_coarse=True)
        prediction = torch.zeros_like(target)
        prediction[:, 1::2] = output  # the output at X_i is the prediction of Y_i
        if coarse is not None:
            coarse = torch.zeros_like(target).index_copy(1, torch.arange(1, 2 * pairs, 2, device=target.device), coarse)
        supervised = torch.zeros(images.shape[0], images.shape[1], 1, *images.shape[-2:], dtype=torch.bool,
                                 device=images.device)
        supervised[:, 1::2] = True
        loss = self.supervised_loss(prediction, coarse, target, self.pixel_weights(images, supervised))
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
            features = self.forward_encoder(normalized, token_mask=token_mask)
            output = self.forward_head(features, pairs, normalized, token_mask, slots=[2 * pairs - 1])[:, 0]
        elif mode == "autoregressive":
            mask = block_causal_mask(pairs, self.config.grid)
            features = self.forward_encoder(normalized, attn_mask=mask)
            output = self.forward_head(features, pairs, normalized, slots=[2 * pairs - 2])[:, 0]
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
        check_model_folder(folder, "MVG")
        with reading_config(folder / CONFIG_NAME):
            config = MVGConfig.load(folder / CONFIG_NAME)
            model = cls(dataclasses.replace(config, mae_checkpoint=None))
        model.config = config
        result = load_weights(model, folder / WEIGHTS_NAME)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{folder / WEIGHTS_NAME} does not match the config: missing {result.missing_keys[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]}")
        return model.eval()

    def num_parameters(self) -> int:
        return int(sum(np.prod(p.shape) for p in self.parameters()))
