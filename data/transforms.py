"""The ONE random spatial transform of the project: an independent random affine per image (SegICL's examples and
query, MVG's prompt and query pairs, the specialist UNet's training batches), with MONAI's RandAffined.

Images are resampled bilinearly, label maps and masks by nearest neighbour, zero outside the image. A draw is a function
of the seed it is given only (about 5 ms per 64 x 64 image + mask pair on one CPU thread).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from monai.transforms import RandAffined


@dataclass(frozen=True)
class SpatialTransformConfig:
    """Independent random affine applied to each example and to the query.

    Attributes:
        rotate_degrees: rotation drawn from [-rotate_degrees, rotate_degrees].
        scale: relative scale change drawn from [-scale, scale], per axis.
        translate_fraction: shift drawn from [-f, f] times the image side, per axis.
    """

    rotate_degrees: float = 10.0
    scale: float = 0.08
    translate_fraction: float = 0.06


def _rand_affined(config: SpatialTransformConfig, size: int, images: tuple[str, ...] = ("image",),
                labels: tuple[str, ...] = ("mask",)) -> RandAffined:
    """MONAI's RandAffined over the named image keys (bilinear) and label keys (nearest), zero padding."""
    shift = config.translate_fraction * size
    return RandAffined(
        keys=images + labels, prob=1.0, mode=("bilinear",) * len(images) + ("nearest",) * len(labels),
        padding_mode="zeros", rotate_range=(np.deg2rad(config.rotate_degrees),), scale_range=(config.scale, config.scale),
        translate_range=(shift, shift),
    )


def random_affine(config: SpatialTransformConfig, images: list[np.ndarray], labels: list[np.ndarray],
                  seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One random affine (drawn from `seed`) applied to 2-D images [H, W] and label maps [H, W] alike: images come
    back float32, label maps with their own dtype."""
    names = tuple(f"image{i}" for i in range(len(images))), tuple(f"label{i}" for i in range(len(labels)))
    affine = _rand_affined(config, images[0].shape[-1] if images else labels[0].shape[-1], *names)
    affine.set_random_state(seed)
    out = affine({**{n: a[None] for n, a in zip(names[0], images)}, **{n: a[None] for n, a in zip(names[1], labels)}})
    moved_images = [np.asarray(out[n], dtype=np.float32)[0] for n in names[0]]
    moved_labels = [np.rint(np.asarray(out[n])[0]).astype(a.dtype) for n, a in zip(names[1], labels)]
    return moved_images, moved_labels
