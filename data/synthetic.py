"""Synthetic in-context tasks, as UniverSeg, MultiverSeg and Neuralizer train on (SynthSeg's generative model).

A task is a random label map (the template): smooth blobs, a nested pair of shapes and a thin curve. Each subject of
the task is the template deformed elastically, drawn with the task's intensity per label (jittered per subject),
times an optional real-image texture, under a bias field, blur and noise (MONAI's transforms). One label of the
template is the target: the examples and the query are different subjects, so only the examples say what to segment.
Every draw is a function of the generator it is given.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

SYNTHETIC_NAME = "marked structure"
SYNTHETIC_MODALITY = "synthetic"


@dataclass(frozen=True)
class SyntheticConfig:
    """How synthetic tasks are drawn.

    Attributes:
        blobs: smooth background regions per template (labels 1..blobs), before the nested shapes and the curve.
        smoothness: the blobs' smoothing in pixels (larger: fewer, rounder regions).
        deformation: the largest elastic displacement of a subject from its template, in pixels.
        intensity_jitter: per-subject change of each label's intensity (fraction of the range).
        bias: the bias field's coefficient range (MONAI RandBiasField).
        noise: the largest standard deviation of the Gaussian noise (images in [0, 1]).
        blur: the largest Gaussian blur sigma in pixels.
        texture_prob: probability that a task multiplies its subjects by a real image's texture.
    """

    blobs: int = 4
    smoothness: float = 6.0
    deformation: float = 6.0
    intensity_jitter: float = 0.08
    bias: float = 0.3
    noise: float = 0.05
    blur: float = 1.0
    texture_prob: float = 0.3


def smooth_blobs(rng: np.random.Generator, size: int, count: int, smoothness: float) -> np.ndarray:
    """A label map of `count` smooth regions: the argmax of smoothed random fields."""
    fields = np.stack([gaussian_filter(rng.standard_normal((size, size)), smoothness) for _ in range(count)])
    return fields.argmax(axis=0).astype(np.int32) + 1


def ellipse(rng: np.random.Generator, size: int, centre: np.ndarray | None = None,
            radius_range: tuple[float, float] = (0.1, 0.25)) -> np.ndarray:
    """A randomly placed, sized and turned filled ellipse."""
    centre = rng.uniform(0.3, 0.7, 2) * size if centre is None else centre
    radii = rng.uniform(*radius_range, 2) * size
    angle = rng.uniform(0, np.pi)
    rows, cols = np.mgrid[:size, :size] - centre[:, None, None]
    along = rows * np.cos(angle) + cols * np.sin(angle)
    across = -rows * np.sin(angle) + cols * np.cos(angle)
    return (along / radii[0]) ** 2 + (across / radii[1]) ** 2 <= 1.0


def thin_curve(rng: np.random.Generator, size: int, width: float = 1.5) -> np.ndarray:
    """A smooth random curve across the image, `width` pixels thick."""
    steps = 4 * size
    heading = np.cumsum(gaussian_filter(rng.standard_normal(steps), 8) * 0.6) + rng.uniform(0, 2 * np.pi)
    points = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * 0.5, axis=0)
    points += rng.uniform(0.2, 0.8, 2) * size - points.mean(axis=0)
    rows, cols = np.mgrid[:size, :size]
    curve = np.zeros((size, size), dtype=bool)
    for point in points[::2]:
        curve |= (rows - point[0]) ** 2 + (cols - point[1]) ** 2 <= width ** 2
    return curve


def task_template(rng: np.random.Generator, size: int, config: SyntheticConfig) -> np.ndarray:
    """A task's label map [size, size]: blobs 1..n, a shape n+1 with a nested shape n+2 inside it, a curve n+3."""
    labels = smooth_blobs(rng, size, config.blobs, config.smoothness)
    outer = ellipse(rng, size)
    centre = np.argwhere(outer).mean(axis=0)
    inner = ellipse(rng, size, centre=centre, radius_range=(0.04, 0.09)) & outer
    labels[outer] = config.blobs + 1
    labels[inner] = config.blobs + 2
    labels[thin_curve(rng, size)] = config.blobs + 3
    return labels


def deform(labels: np.ndarray, rng: np.random.Generator, displacement: float) -> np.ndarray:
    """A label map warped by a smooth random displacement field (nearest neighbour)."""
    from monai.transforms import Rand2DElastic

    elastic = Rand2DElastic(spacing=(16, 16), magnitude_range=(0.0, displacement), prob=1.0, mode="nearest",
                            padding_mode="border")
    elastic.set_random_state(int(rng.integers(2**31 - 1)))
    return np.asarray(elastic(labels[None].astype(np.float32)))[0].round().astype(np.int32)


def render(labels: np.ndarray, intensities: np.ndarray, rng: np.random.Generator, config: SyntheticConfig,
           texture: np.ndarray | None = None) -> np.ndarray:
    """An image in [0, 1] of a label map: its labels' intensities (jittered), texture, bias field, blur, noise."""
    from monai.transforms import RandBiasField

    jittered = np.clip(intensities + rng.uniform(-1, 1, intensities.shape) * config.intensity_jitter, 0, 1)
    image = jittered[labels]
    if texture is not None:
        image = image * (0.5 + texture)
    bias = RandBiasField(coeff_range=(0.0, config.bias), prob=1.0)
    bias.set_random_state(int(rng.integers(2**31 - 1)))
    image = np.asarray(bias(image[None].astype(np.float32)))[0]
    image = gaussian_filter(image, rng.uniform(0, config.blur))
    image = image + rng.normal(0, rng.uniform(0, config.noise), image.shape)
    low, high = image.min(), image.max()
    return ((image - low) / (high - low if high > low else 1.0)).astype(np.float32)


def synthetic_pairs(rng: np.random.Generator, count: int, size: int, config: SyntheticConfig = SyntheticConfig(),
                    textures: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (image, mask) pairs [size, size] of one synthetic task: subjects of one template, one target label
    present on every subject (redrawn subjects otherwise)."""
    template = task_template(rng, size, config)
    labels = np.unique(template)
    target = int(rng.choice(labels))
    intensities = rng.uniform(0, 1, int(labels.max()) + 1)
    texture = None
    if textures and rng.random() < config.texture_prob:
        texture = np.asarray(textures[rng.integers(len(textures))], dtype=np.float32)
    pairs = []
    for attempt in range(20 * count):
        subject = deform(template, rng, config.deformation) if attempt < 19 * count else template
        mask = subject == target
        if mask.any():
            pairs.append((render(subject, intensities, rng, config, texture), mask.astype(np.float32)))
        if len(pairs) == count:
            break
    return pairs
