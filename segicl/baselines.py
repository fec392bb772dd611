"""Trivial baselines that every model figure is reported beside."""
from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from segicl_data.episodes import Episode
from segicl_data.preprocess import resample

FUSIONS = ("vote", "staple")  # label fusions of registered example masks
_SIMPLEITK_THREADS_LOCK = threading.Lock()  # one registration at a time may hold SimpleITK's global thread count


def copy_example_baseline(example_mask: np.ndarray, query_shape: tuple[int, int]) -> np.ndarray:
    """Predict the first example's mask, resampled (nearest neighbour) onto the query's grid."""
    mask = np.asarray(example_mask, dtype=np.float32).squeeze()
    if mask.ndim != 2:
        raise ValueError(f"example mask must be 2-D (optionally with singleton axes), got shape {example_mask.shape}")
    return (resample(mask, query_shape, nearest=True) > 0.5).astype(np.float32)


def predict_copy(episode: Episode) -> np.ndarray:
    """The copy baseline on an episode; it needs at least one example."""
    if episode.k == 0:
        raise ValueError("the copy-example baseline needs at least one example (k >= 1)")
    return copy_example_baseline(episode.example_masks[0], episode.query_mask.shape[-2:])


def predict_union(episode: Episode) -> np.ndarray:
    """Label fusion of all examples: the union of their masks (the example prior's mask; k >= 1)."""
    if episode.k == 0:
        raise ValueError("the union-of-examples baseline needs at least one example (k >= 1)")
    return np.stack([copy_example_baseline(mask, episode.query_mask.shape[-2:]) for mask in episode.example_masks]).max(0)


@dataclass(frozen=True)
class RegistrationConfig:
    """Registration of an example image to the query (SimpleITK), the label-fusion peer's first step.

    Attributes:
        iterations: optimiser iterations per resolution level.
        histogram_bins: Mattes mutual information bins.
        shrink_factors, smoothing_sigmas: the multi-resolution pyramid (coarse to fine; sigmas in pixels).
        seed: of the metric's random sampling, >= 1 (SimpleITK reads 0 as "seed from the wall clock", which made
            every run register differently).
        threads: SimpleITK threads of one registration (and of STAPLE). One by default, on every machine: the
            registered masks depend on the thread count (10 of 120 real registrations differed between 2 and 4
            threads, and at 2 some differed from run to run; none at 1), and on 64-px slices more threads save
            nothing (50 ms per registration with 1, 2 or 4 on an idle 2-core machine) and cost under load (124 ms
            with one thread, 231 ms with two, two other processes running).
    """

    iterations: int = 100
    histogram_bins: int = 32
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    seed: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        if self.seed < 1:
            raise ValueError(f"registration seed must be >= 1 (0 means the wall clock to SimpleITK), got {self.seed}")
        if self.threads < 1:
            raise ValueError(f"registration threads must be >= 1, got {self.threads}")


def _registration_method(config: RegistrationConfig):
    """Mattes MI on a multi-resolution pyramid; regular-step gradient descent with physical-shift scales."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.5, config.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=config.iterations,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(config.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(config.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


@contextmanager
def _simpleitk_threads(threads: int):
    """SimpleITK's global default thread count set to `threads` for the block, then restored. Global because parts
    of a registration read the default, not the registration method's own count: with that set to 1, 10 of 120
    registered masks still differed between defaults of 2 and 4 threads, and 1-2 between two runs at 2."""
    import SimpleITK as sitk

    with _SIMPLEITK_THREADS_LOCK:
        previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def register_mask(example_image: np.ndarray, example_mask: np.ndarray, query_image: np.ndarray,
                  config: RegistrationConfig = RegistrationConfig()) -> np.ndarray:
    """The example's mask carried onto the query [S, S]: the example image registered to the query image (affine,
    Mattes mutual information, multi-resolution), the mask resampled through the transform by nearest neighbour, on `config.threads` SimpleITK threads. Falls back to the
    unregistered mask when the optimiser fails (a constant image has no gradient)."""
    with _simpleitk_threads(config.threads):
        return _register_mask(example_image, example_mask, query_image, config)


def _register_mask(example_image: np.ndarray, example_mask: np.ndarray, query_image: np.ndarray,
                   config: RegistrationConfig) -> np.ndarray:
    import SimpleITK as sitk

    fixed = sitk.GetImageFromArray(np.asarray(query_image, np.float32).squeeze())
    moving = sitk.GetImageFromArray(np.asarray(example_image, np.float32).squeeze())
    mask = sitk.GetImageFromArray(np.asarray(example_mask, np.float32).squeeze().astype(np.uint8))
    try:
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
        method = _registration_method(config)
        method.SetInitialTransform(initial, inPlace=False)
        transform = method.Execute(fixed, moving)
    except RuntimeError:
        return (np.asarray(example_mask, np.float32).squeeze() > 0.5).astype(np.float32)
    moved = sitk.Resample(mask, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(moved).astype(np.float32)


def fusion_probability(masks: list[np.ndarray], fusion: str = "vote") -> np.ndarray:
    """The foreground probability [S, S] that label fusion gives registered masks [S, S] each: "vote" (the fraction
    of masks marking a pixel) or "staple" (SimpleITK's STAPLE; the vote where STAPLE is undefined: one rater, or
    an empty one)."""
    if not masks:
        raise ValueError("label fusion needs at least one mask")
    if fusion not in FUSIONS:
        raise ValueError(f"unknown label fusion {fusion!r}; expected 'vote' or 'staple'")
    if fusion == "vote" or len(masks) == 1 or not all(m.any() for m in masks):
        return np.mean(masks, axis=0).astype(np.float32)
    import SimpleITK as sitk

    with _simpleitk_threads(RegistrationConfig().threads):
        probability = sitk.STAPLE([sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks], 1.0)
    return sitk.GetArrayFromImage(probability).astype(np.float32)


def fuse_masks(masks: list[np.ndarray], fusion: str = "vote") -> np.ndarray:
    """Binary label fusion of registered masks [S, S] each: `fusion_probability` > 0.5 (for "vote" a majority; a tie
    is background)."""
    return (fusion_probability(masks, fusion) > 0.5).astype(np.float32)


class RegistrationFusion:
    """Episodes -> registration + label fusion predictions (None for k = 0), each example registered once: nested
    episodes of k = 1, 3, 5 share their query and first examples, so their registrations are reused."""

    def __init__(self, config: RegistrationConfig = RegistrationConfig(), fusion: str = "vote"):
        fuse_masks([np.zeros((1, 1))], fusion)  # refuse an unknown fusion now, not mid-benchmark
        self.config, self.fusion = config, fusion
        self._registered: dict[tuple[bytes, bytes], np.ndarray] = {}

    def with_fusion(self, fusion: str) -> "RegistrationFusion":
        """The same registrations (one shared cache), fused another way: vote and STAPLE register each example once."""
        other = RegistrationFusion(self.config, fusion)
        other._registered = self._registered
        return other

    def register(self, example_image: np.ndarray, example_mask: np.ndarray, query_image: np.ndarray) -> np.ndarray:
        key = (hashlib.sha1(np.ascontiguousarray(query_image, np.float32).tobytes()).digest(),
               hashlib.sha1(np.ascontiguousarray(example_image, np.float32).tobytes()
                            + np.ascontiguousarray(example_mask, np.float32).tobytes()).digest())
        if key not in self._registered:
            self._registered[key] = register_mask(example_image, example_mask, query_image, self.config)
        return self._registered[key]

    def registered_masks(self, example_images: np.ndarray, example_masks: np.ndarray,
                         query_image: np.ndarray) -> list[np.ndarray]:
        """Each example's mask [S, S] carried onto the query (example_images / example_masks [K, 1, S, S])."""
        return [self.register(image, mask, query_image) for image, mask in zip(example_images, example_masks)]

    def predict(self, episode: Episode) -> np.ndarray:
        if episode.k == 0:
            raise ValueError("registration + label fusion needs at least one example (k >= 1)")
        return fuse_masks(self.registered_masks(episode.example_images, episode.example_masks, episode.query_image),
                          self.fusion)

    def __call__(self, episodes: list[Episode]) -> list[np.ndarray | None]:
        return [self.predict(e) if e.k else None for e in episodes]
