"""The specialist reference of the benchmark: one MONAI UNet per structure, trained on that structure's
slices of the training volumes (for a held-out structure: the support slices its examples come from),
for a fixed CPU time budget, with the same random affines as the episodes."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from data.dataset import SliceDataset
from data.transforms import SpatialTransformConfig, random_affine


@dataclass(frozen=True)
class SpecialistConfig:
    """Attributes:
        channels: UNet feature widths per level (MONAI `UNet(channels=...)`).
        num_res_units: residual units per level.
        learning_rate: Adam learning rate.
        batch_size: slices per step.
        budget_s: wall-clock training budget in seconds (the same for every structure).
        max_steps: stop earlier than the budget after this many steps (None: the budget alone).
        transform: random affine applied to every training slice (None: no augmentation).
        seed: seed of the initial weights and of the batches.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 1
    learning_rate: float = 2e-3
    batch_size: int = 16
    budget_s: float = 60.0
    max_steps: int | None = None
    transform: SpatialTransformConfig | None = SpatialTransformConfig()
    seed: int = 0


def training_slices(dataset: SliceDataset, task: str, splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """All (image, mask) slices [N, 1, R, R] of one task on the rows whose split is in `splits`."""
    images, masks = [], []
    for row in dataset.rows_by_task.get(task, []):
        info = dataset.rows[row]
        if info["split"] not in splits:
            continue
        for slice_index in info["slices"]:
            images.append(dataset.image(info["volume"], slice_index))
            masks.append(dataset.mask(row, slice_index))
    if not images:
        raise ValueError(f"task {task!r} has no slices in splits {splits}")
    return np.stack(images)[:, None].astype(np.float32), np.stack(masks)[:, None].astype(np.float32)


def build_unet(config: SpecialistConfig) -> UNet:
    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=config.channels,
                strides=(2,) * (len(config.channels) - 1), num_res_units=config.num_res_units)


def augmented_batch(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                    config: SpecialistConfig) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = rng.integers(len(images), size=config.batch_size)
    if config.transform is None:
        return torch.from_numpy(images[chosen]), torch.from_numpy(masks[chosen])
    batch_images, batch_masks = [], []
    for index in chosen:
        (image,), (mask,) = random_affine(config.transform, [images[index][0]], [masks[index][0]],
                                          int(rng.integers(2**31 - 1)))
        batch_images.append(torch.from_numpy(image)[None])
        batch_masks.append((torch.from_numpy(mask)[None] > 0.5).float())
    return torch.stack(batch_images), torch.stack(batch_masks)


def train_specialist(images: np.ndarray, masks: np.ndarray, config: SpecialistConfig = SpecialistConfig()
                     ) -> tuple[UNet, dict]:
    """Train one UNet on [N, 1, R, R] slices until the budget (or max_steps) is spent."""
    if images.shape != masks.shape or images.ndim != 4:
        raise ValueError(f"images and masks must both be [N, 1, R, R], got {images.shape} and {masks.shape}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = build_unet(config)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    loss_function = DiceCELoss(sigmoid=True)
    losses, start, step = [], time.perf_counter(), 0
    while time.perf_counter() - start < config.budget_s and (config.max_steps is None or step < config.max_steps):
        batch_images, batch_masks = augmented_batch(images, masks, rng, config)
        loss = loss_function(net(batch_images), batch_masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
    net.eval()
    return net, {"steps": step, "seconds": time.perf_counter() - start, "slices": len(images),
                 "first_loss": losses[0] if losses else None, "last_loss": float(np.mean(losses[-10:])) if losses else None}


@torch.no_grad()
def predict_specialist(net: UNet, images: np.ndarray) -> np.ndarray:
    """Binary masks [B, R, R] for images [B, 1, R, R]."""
    return (torch.sigmoid(net(torch.as_tensor(images, dtype=torch.float32))) > 0.5).float()[:, 0].numpy()
