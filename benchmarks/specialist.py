"""The specialist reference of the benchmark: one MONAI UNet per structure, trained on that structure's
slices of the training volumes (for a held-out structure: the support slices its examples come from),
with the same random affines as the episodes, until its validation loss stops falling (early stopping on
every `validation_every`-th slice, held out of its training; the best weights are kept)."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from segicl_data.dataset import SliceDataset
from segicl_data.transforms import SpatialTransformConfig, random_affine


@dataclass(frozen=True)
class SpecialistConfig:
    """Attributes:
        channels: UNet feature widths per level (MONAI `UNet(channels=...)`).
        num_res_units: residual units per level.
        learning_rate: Adam learning rate.
        batch_size: slices per step.
        budget_s: wall-clock ceiling in seconds; None: only early stopping and max_steps end the training.
        max_steps: stop after this many steps at the latest (None: no ceiling).
        validation_every: every n-th slice is a validation slice (0: no validation, no early stopping).
        evaluate_every: steps between validation losses.
        patience: validations without a new best loss before training stops.
        transform: random affine applied to every training slice, and once (seeded) to the validation slices.
        seed: seed of the initial weights and of the batches.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 1
    learning_rate: float = 2e-3
    batch_size: int = 16
    budget_s: float | None = None
    max_steps: int | None = 4000
    validation_every: int = 6
    evaluate_every: int = 25
    patience: int = 6
    transform: SpatialTransformConfig | None = SpatialTransformConfig()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget_s is None and self.max_steps is None and not self.validation_every:
            raise ValueError("a specialist needs a budget, a step ceiling or early stopping to end its training")


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


def split_validation(images: np.ndarray, masks: np.ndarray, config: SpecialistConfig) -> tuple:
    """(training images, training masks, validation images, validation masks): every `validation_every`-th slice
    is held out (fixed affines applied once, seeded); no validation with fewer than 2 * validation_every slices."""
    if not config.validation_every or len(images) < 2 * config.validation_every:
        return images, masks, None, None
    held = np.arange(len(images)) % config.validation_every == config.validation_every - 1
    validation_images, validation_masks = images[held], masks[held]
    if config.transform is not None:
        rng = np.random.default_rng(config.seed + 1)
        moved = [random_affine(config.transform, [image[0]], [mask[0]], int(rng.integers(2**31 - 1)))
                 for image, mask in zip(validation_images, validation_masks)]
        validation_images = np.stack([image for (image,), _ in moved])[:, None]
        validation_masks = (np.stack([mask for _, (mask,) in moved])[:, None] > 0.5).astype(np.float32)
    return images[~held], masks[~held], validation_images, validation_masks


def train_specialist(images: np.ndarray, masks: np.ndarray, config: SpecialistConfig = SpecialistConfig()
                     ) -> tuple[UNet, dict]:
    """Train one UNet on [N, 1, R, R] slices until its validation loss stops falling (or the budget or max_steps
    is spent); the weights of the best validation loss are returned."""
    if images.shape != masks.shape or images.ndim != 4:
        raise ValueError(f"images and masks must both be [N, 1, R, R], got {images.shape} and {masks.shape}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = build_unet(config)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    loss_function = DiceCELoss(sigmoid=True)
    train_images, train_masks, validation_images, validation_masks = split_validation(images, masks, config)
    losses, start, step = [], time.perf_counter(), 0
    best = {"loss": float("inf"), "step": 0, "state": None}
    since_best = 0
    while ((config.budget_s is None or time.perf_counter() - start < config.budget_s)
           and (config.max_steps is None or step < config.max_steps)):
        batch_images, batch_masks = augmented_batch(train_images, train_masks, rng, config)
        net.train()
        loss = loss_function(net(batch_images), batch_masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if validation_images is not None and step % config.evaluate_every == 0:
            net.eval()
            with torch.no_grad():
                validation = loss_function(net(torch.from_numpy(validation_images)),
                                           torch.from_numpy(validation_masks)).item()
            if validation < best["loss"]:
                best = {"loss": validation, "step": step, "state": copy.deepcopy(net.state_dict())}
                since_best = 0
            else:
                since_best += 1
                if since_best >= config.patience:
                    break
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    net.eval()
    stopped = "validation" if since_best >= config.patience else "budget"
    return net, {"steps": step, "best_step": best["step"] if best["state"] is not None else step,
                 "validation_loss": best["loss"] if best["state"] is not None else None, "stopped_by": stopped,
                 "seconds": time.perf_counter() - start, "slices": len(train_images),
                 "validation_slices": 0 if validation_images is None else len(validation_images),
                 "first_loss": losses[0] if losses else None,
                 "last_loss": float(np.mean(losses[-10:])) if losses else None}


@torch.no_grad()
def predict_specialist(net: UNet, images: np.ndarray) -> np.ndarray:
    """Binary masks [B, R, R] for images [B, 1, R, R]."""
    return (torch.sigmoid(net(torch.as_tensor(images, dtype=torch.float32))) > 0.5).float()[:, 0].numpy()
