"""The volume-level API: an image (a file, a read `MedicalImage` or an array; a 2-D slice or a 3-D volume), an
instruction and examples (files, arrays, or a dataset's example bank) -> a mask or a label map, the probabilities and
the uncertainty, in the input's own geometry. `SegICLPipeline.segment` is its front door; `segicl segment`, the web
app and the benchmarks call the same functions.

The steps: the query is cut into display slices by the orientation rule of `segicl_data.volumes`, a volume to its
foreground the way the training slices were cut (`prepare_query`); examples become one list shared by every slice, or
one list per slice (3-D example volumes and banks are position-matched: `file_examples`, `bank_targets`); each
structure runs through the slice-level pipeline (`segment_image`), is postprocessed here (`postprocess`), and goes
back onto the file's grid (`Query.to_file`).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from segicl.augment import VIEWS, ensemble_call
from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS
from segicl.registered_examples import MIN_EXAMPLES, choose_weight, fuse, registered_maps
from segicl_data.bank import POSITIONS, ExampleBank, bank_structures, find_structure, position_slice
from segicl_data.dataset import SliceDataset
from segicl_data.episodes import prompt_slice
from segicl_data.imageio import MedicalImage, check_not_constant, image_from_array, read_image, write_image
from segicl_data.importer import read_label_names
from segicl_data.preprocess import SquareCrop, apply_crop, normalize_intensity
from segicl_data.volumes import crop_to_foreground, from_model_slices, load_example_slices, paste_crop, to_model_slices

ImageInput = str | Path | MedicalImage | np.ndarray
"""What the API takes as an image: a path (NIfTI, DICOM file or series folder, PNG/JPG, NPY), an image read with
`segicl_data.imageio.read_image`, or an array (a 2-D slice, or display slices [S, H, W])."""

AXES = ("axial", "coronal", "sagittal")
NORMALIZATIONS = ("percentile", "ct", "none")


def as_medical_image(image: ImageInput, name: str = "image") -> MedicalImage:
    """A path is read, an array wrapped without geometry (taken as display-oriented), a `MedicalImage` kept."""
    if isinstance(image, MedicalImage):
        return image
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, np.ndarray):
        return image_from_array(image, name)
    raise ValueError(f"{name} must be a path, a MedicalImage or a numpy array, got {type(image).__name__}")


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary mask (2-D slice or 3-D volume, full connectivity; MONAI's
    KeepLargestConnectedComponent), as nnU-Net's post-processing does for one-piece structures: the scattered specks
    the decoder leaves on slices without the structure go, and so does any second piece of a two-part structure."""
    from monai.transforms import KeepLargestConnectedComponent

    kept = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False)(np.asarray(mask, np.uint8)[None])
    return np.asarray(kept)[0].astype(mask.dtype)


@dataclass
class Target:
    """One structure to segment: its instruction, its examples (shared or one list per slice), its output value."""

    instruction: str
    examples: list
    slice_examples: list | None
    value: int = 1


@dataclass
class Query:
    """A query as the model sees it: the file (`segicl_data.imageio.MedicalImage`), its display slices [S, H, W] (the
    orientation rule of `segicl_data.volumes`) and the slices the model segments (a volume cut to its foreground: `crop`)."""

    image: MedicalImage
    axis: str
    slices: np.ndarray
    model_slices: np.ndarray
    crop: SquareCrop | None = None

    def to_display(self, maps: np.ndarray) -> np.ndarray:
        """Maps of the model slices back onto every display slice of the file."""
        return paste_crop(maps, self.crop, self.slices.shape) if self.crop else maps

    def to_file(self, display_maps: np.ndarray) -> np.ndarray:
        """Display-slice maps in the file's own voxel order and shape (what `write_image` writes beside it)."""
        return from_model_slices(display_maps, self.image, self.axis)


@dataclass
class Settings:
    """How the pipeline runs.

    Attributes:
        steps, samples: decoder steps x samples (the measured default).
        batch_size: slices per model batch.
        normalization: the intensity mapping ("percentile", "ct" for Hounsfield units, "none").
        seed: the decoder's noise seed.
        largest_component: each mask keeps only its largest connected component.
        views: test-time augmentation, 1 to 8 views of the query and its examples together (flips and quarter
            turns, `segicl.augment.VIEWS`), averaged; each view costs one more run.
        example_sets: when more examples are given than the model reads, the most subsets of them the answer
            averages (each costs one more run); fewer examples than the model reads use them all, once.
        register_examples: fuse the answer with the examples' masks registered to each query slice (affine, STAPLE)
            at the weight the examples choose by answering one another (`segicl.registered_examples`); needs 2 or
            more examples, and costs up to 3 more runs on single slices plus a registration per example and slice.
    """

    steps: int = DEFAULT_STEPS
    samples: int = DEFAULT_SAMPLES
    batch_size: int = 16
    normalization: str = "percentile"
    seed: int = 0
    largest_component: bool = False
    views: int = 1
    example_sets: int = 4
    register_examples: bool = False

    def validate(self) -> "Settings":
        if self.steps < 1 or self.samples < 1:
            raise ValueError(f"steps and samples must be >= 1, got {self.steps} and {self.samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; expected one of {NORMALIZATIONS}")
        if not 1 <= self.views <= len(VIEWS):
            raise ValueError(f"views must be 1 to {len(VIEWS)}, got {self.views}")
        if self.example_sets < 1:
            raise ValueError(f"example_sets must be >= 1, got {self.example_sets}")
        return self


@dataclass
class SegmentResult:
    """`segment_image`'s answer on the query's display slices [S, H, W] (`Query.to_file` gives the file's grid):
    the mask (0/1, or the targets' values as a label map), the first target's probabilities and uncertainty (the
    spread over the samples), the seconds spent in the vision tower, the LLM and the decoder, and per target
    (by instruction) its value, seconds and uncertainty score (`uncertainty_score`)."""

    mask: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    timings: dict = field(default_factory=dict)
    structures: dict[str, dict] = field(default_factory=dict)


# Voxels whose mean probability reaches this are where a structure may be: its uncertainty score is their mean spread.
UNCERTAIN_FROM = 0.05


def uncertainty_score(probabilities: np.ndarray, uncertainty: np.ndarray) -> float:
    """One number per structure for ranking cases to correct: the mean spread of the samples over the voxels where
    the structure may be (mean probability >= UNCERTAIN_FROM); 0 where no voxel may be."""
    where = probabilities >= UNCERTAIN_FROM
    return round(float(uncertainty[where].mean()), 5) if where.any() else 0.0


def example_label_value(label: str | int | None, mask: ImageInput) -> int | None:
    """The example label (`--example-label`) as a label value: a number, or a name looked up in the dataset.json of
    the mask file's dataset (nnU-Net: labelsTr/..)."""
    if label is None or isinstance(label, int) or label.isdigit():
        return None if label is None else int(label)
    if not isinstance(mask, (str, Path)):
        raise ValueError(f"--example-label {label!r} is a name, which is looked up beside a mask file; the mask was "
                         "given as an array: give the label value instead")
    mask_path = Path(mask)
    description = mask_path.resolve().parent.parent / "dataset.json"
    if not description.exists():
        raise ValueError(f"--example-label {label!r} is a name, but there is no {description} to look it up in; "
                         "give the label value instead")
    names = read_label_names(description)
    for name, values in names.items():
        if name.lower() == label.lower():
            if len(values) != 1:
                raise ValueError(f"--example-label {label!r} is a region of several values {list(values)}")
            return values[0]
    raise ValueError(f"--example-label {label!r} is not in {description}: labels {sorted(names)}")


def file_examples(pairs: Sequence[tuple[ImageInput, ImageInput]], query_slices: int, axis: str = "axial",
                  normalization: str = "percentile",
                  example_label: str | int | None = None) -> tuple[list, list | None]:
    """Examples as (image, mask) pairs, each a path, a read image or an array: (shared pairs, None) when all are 2-D;
    (empty, one list per slice) when any is a volume, each volume cut to its foreground and lending its slice at the
    query slice's relative position, normalised as a whole volume. `example_label` (a value, or a dataset.json name
    for mask files) picks the structure of label-map masks."""
    stacks = []
    for number, (image, mask) in enumerate(pairs, start=1):
        label = example_label_value(example_label, mask)
        images, masks = load_example_slices(as_medical_image(image, f"example {number} image"),
                                            as_medical_image(mask, f"example {number} mask"), axis, label)
        if len(images) > 1:
            images, crop = crop_to_foreground(images, normalization == "ct", labels=masks)
            masks = apply_crop(masks, crop)
        stacks.append((images, masks))
    if all(len(images) == 1 for images, _ in stacks):
        return [(images[0], masks[0]) for images, masks in stacks], None
    normalized = [(normalize_intensity(images, normalization), masks) for images, masks in stacks]
    return [], [[(images[prompt_slice(q, query_slices, len(images))], masks[prompt_slice(q, query_slices, len(images))])
                 for images, masks in normalized] for q in range(query_slices)]


def bank_names(dataset: SliceDataset, label: str | None, labels: str | Sequence[str] | None) -> list[str]:
    """The structures asked for: one `label`, or `labels` "all", a comma list "a,b" or a list of names."""
    if label:
        return [label]
    if isinstance(labels, str) and labels.strip().lower() == "all":
        structures = bank_structures(dataset)
        return sorted(structures, key=lambda name: structures[name].label_ids)
    names = labels.split(",") if isinstance(labels, str) else labels
    return [name.strip() for name in names if name.strip()]


def bank_targets(dataset: SliceDataset, names: list[str], text: str | None, k: int, query: np.ndarray,
                 position: float | None = None) -> list[Target]:
    """One target per structure name of a dataset (`segicl_data.dataset.SliceDataset`), its k examples per query slice from
    the dataset's bank (k = 0: the instruction alone; from the k cases most like `query`, its model slices [S, H, W],
    where more are labelled); `text` replaces the worded instruction. `position` (0 = the first slice of a volume,
    1 = the last): where a single query slice lies in its volume, which the bank's position-matched examples follow;
    None: the query's own slices are the volume."""
    query_slices = len(query)
    if position is not None and (query_slices != 1 or not 0.0 <= position <= 1.0):
        raise ValueError(f"a relative position in [0, 1] is for a single query slice; got {position} for "
                         f"{query_slices} slice(s)")

    targets = []
    for name in names:
        structure = find_structure(dataset, name)
        instruction = text or f"Segment the {structure.name} in this {structure.modality} slice."
        value = structure.label_ids[0] if len(structure.label_ids) == 1 else len(targets) + 1
        if k == 0:
            targets.append(Target(instruction, [], None, value))
        else:
            bank = ExampleBank(dataset, name, k, query=query, position=position)
            if position is None:
                examples = bank.examples_per_slice(query_slices)
            else:
                examples = [bank.examples_for(position_slice(position), POSITIONS)]
            targets.append(Target(instruction, [], examples, value))
    return targets


def label_map(probabilities: list[np.ndarray], values: list[int], threshold: float = 0.5) -> np.ndarray:
    """Each voxel the value of the class with the highest probability, if above `threshold`, else 0."""
    stacked = np.stack(probabilities)
    best = stacked.argmax(axis=0)
    out = np.asarray(values, dtype=np.uint16)[best]
    out[stacked.max(axis=0) <= threshold] = 0
    return out


def postprocess(probabilities: list[np.ndarray], values: list[int] | None, largest_component: bool = False,
                threshold: float = 0.5) -> np.ndarray:
    """The answer from each structure's probabilities: one structure's 0/1 mask (`values` None), or a label map of
    `values` (`label_map`); with `largest_component`, each structure keeps its largest connected component over the
    whole volume (`keep_largest_component`)."""
    if values is None:
        mask, values = (probabilities[0] > threshold).astype(np.uint8), [1]
    else:
        mask = label_map(probabilities, values, threshold)
    if largest_component:
        for value in values:
            structure = mask == value
            mask[structure & ~keep_largest_component(structure)] = 0
    return mask


def prepare_query(image: MedicalImage, axis: str = "axial", crop: bool = True, ct: bool = False) -> Query:
    """A read image (`segicl_data.imageio.read_image`) as display slices; a volume cut to its foreground unless `crop`
    is off (`segicl_data.volumes.crop_to_foreground`, as the training slices were cut)."""
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r}; expected one of {AXES}")
    check_not_constant(image.array, image.path)  # the crop's zero padding would hide it from the pipeline's check
    slices = to_model_slices(image, axis)
    if crop and len(slices) > 1:
        model_slices, square = crop_to_foreground(slices, ct)
        return Query(image, axis, slices, model_slices, square)
    return Query(image, axis, slices, slices)


def segment_image(query: Query, targets: list[Target], pipeline, settings: Settings, as_label_map: bool = False,
                  progress: bool = False, callback: Callable[[float], None] | None = None) -> SegmentResult:
    """Every target on the query's model slices (one `SegICLPipeline` call each), back on its display slices.

    `as_label_map`: the mask is a label map of the targets' values (`label_map`); otherwise the first target's 0/1
    mask. `callback(fraction)` is called after every batch of slices with the fraction done (0..1); an exception it
    raises stops the run (the web app's cancel button)."""
    for target in targets:
        check_registration(target, settings)
    outputs, structures = [], {}
    for index, target in enumerate(targets):
        def fraction(done: float, index: int = index) -> None:
            callback((index + done) / len(targets))

        start = time.perf_counter()
        output = ensemble_call(partial(call_pipeline, pipeline, target.instruction, settings, progress),
                               query.model_slices, target.examples, target.slice_examples,
                               pipeline.model.config.max_examples, settings.views, settings.example_sets,
                               None if callback is None else fraction)
        probabilities, uncertainty, times = output
        report = {"value": target.value}
        if settings.register_examples:
            weight, probabilities, uncertainty = with_registered_examples(pipeline, settings, target,
                                                                          query.model_slices, probabilities,
                                                                          uncertainty, progress)
            report["model_weight"] = weight
        outputs.append((probabilities, uncertainty, times))
        structures[target.instruction] = {**report, "seconds": round(time.perf_counter() - start, 3),
                                          "uncertainty": uncertainty_score(probabilities, uncertainty)}
    mask = postprocess([probabilities for probabilities, _, _ in outputs],
                       [t.value for t in targets] if as_label_map else None, settings.largest_component)
    timings = {key: sum(times[key] for _, _, times in outputs) for key in ("vision_s", "llm_s", "decoder_s")}
    return SegmentResult(query.to_display(mask), query.to_display(outputs[0][0]), query.to_display(outputs[0][1]),
                         timings, structures)


def check_registration(target: Target, settings: Settings) -> None:
    """Refuse `register_examples` with fewer examples than choosing its weight needs, before any work."""
    count = len(target.slice_examples[0]) if target.slice_examples else len(target.examples)
    if settings.register_examples and count < MIN_EXAMPLES:
        raise ValueError(f"registering the examples needs at least {MIN_EXAMPLES} examples (they choose the fusion "
                         f"weight by answering one another), got {count}")


def most_marked(slice_examples: list) -> list:
    """The query slice's examples that hold the structure most: most examples with it, then the largest area."""
    def marked(pairs: list) -> tuple[int, float]:
        areas = [float(np.asarray(mask).sum()) for _, mask in pairs]
        return sum(area > 0 for area in areas), sum(areas)

    return max(slice_examples, key=marked)


def with_registered_examples(pipeline, settings: Settings, target: Target, slices: np.ndarray,
                             probabilities: np.ndarray, uncertainty: np.ndarray, progress: bool = False):
    """(the model's weight, probabilities, uncertainty) fused with the examples registered to every slice
    (`segicl.registered_examples`); the weight is chosen on the shared examples, or on the slice's examples that
    hold the structure most (already in [0, 1]: the held-out example is not normalised again)."""
    pairs = target.examples if target.slice_examples is None else most_marked(target.slice_examples)
    own = settings if target.slice_examples is None else replace(settings, normalization="none")

    def answer(image: np.ndarray, others: list) -> np.ndarray:
        return call_pipeline(pipeline, target.instruction, own, False, image[None], others, None, 0,
                             None).probabilities[0]

    weight = choose_weight(answer, pairs, reads=pipeline.model.config.max_examples, size=pipeline.size)
    if weight == 1.0:
        return weight, probabilities, uncertainty
    registered = registered_maps(slices, target.examples, target.slice_examples, pipeline.size, progress=progress)
    return (weight, *fuse(probabilities, uncertainty, registered, weight))


def call_pipeline(pipeline, instruction: str, settings: Settings, progress: bool, slices: np.ndarray, examples: list,
                  slice_examples: list | None, run_index: int, callback):
    """One pipeline call of an ensemble (`segicl.augment.ensemble_call`); each run its own decoder seed."""
    return pipeline(slices, instruction, examples, num_samples=settings.samples, num_steps=settings.steps,
                    batch_size=settings.batch_size, normalization=settings.normalization,
                    seed=settings.seed + run_index, progress=progress, slice_examples=slice_examples,
                    callback=callback)




@dataclass
class VolumeSegmentation:
    """`segment`'s answer on the input's own voxel grid (the file's shape and voxel order; `save` writes its geometry).

    Attributes:
        mask: uint8 0/1 for one structure, or a uint16 label map of `label_values` for several.
        probabilities: float32 in [0, 1], the first structure's mean probability over the decoder's samples.
        uncertainty: float32, the first structure's per-voxel spread (standard deviation) over the samples.
        structures: each structure's instruction -> its value in `mask`, its seconds and its uncertainty score
            (`uncertainty_score`: the mean spread over the voxels where it may be; rank cases to correct by it).
        timings: seconds in the vision tower, the LLM and the decoder.
        image: the input, whose geometry (affine, orientation) the written files carry.
        slices: how many slices went through the model (a volume is cut to its foreground first).
    """

    mask: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    structures: dict[str, dict]
    timings: dict[str, float]
    image: MedicalImage
    slices: int

    @property
    def label_values(self) -> dict[str, int]:
        """Each structure's instruction -> its value in `mask`."""
        return {name: structure["value"] for name, structure in self.structures.items()}

    def save(self, path: str | Path, what: str = "mask") -> Path:
        """Write `mask`, `probabilities` or `uncertainty` (.nii.gz, .nii, .png, .npy) in the input's geometry."""
        if what not in ("mask", "probabilities", "uncertainty"):
            raise ValueError(f"what must be 'mask', 'probabilities' or 'uncertainty', got {what!r}")
        return write_image(path, getattr(self, what), self.image)


def check_prompt(text: str | None, examples: Sequence, examples_from, label: str | None, labels, k: int) -> None:
    """Refuse prompts that cannot work, before anything is read: a text or a dataset's structure must say what to
    segment, examples come from files or from a dataset, and one structure or a label map is asked for."""
    if examples_from is None:
        if label or labels:
            raise ValueError("--label and --labels name structures of a dataset: give it with --examples-from")
        if not text or not text.strip():
            raise ValueError("--text is required (or --examples-from DATASET --label NAME, which words it)")
        return
    if len(examples):
        raise ValueError("give examples either as files (--example) or from a dataset (--examples-from), not both")
    if bool(label) == bool(labels):
        raise ValueError("--examples-from needs one of --label NAME (a mask) or --labels all|a,b (a label map)")
    if labels and text:
        raise ValueError("--labels words one instruction per label itself; leave --text out")
    if k < 0:
        raise ValueError(f"-k must be >= 0, got {k}")


def prompt_targets(query: Query, text: str | None, examples: Sequence, example_label, examples_from, label, labels,
                   k: int, normalization: str) -> list[Target]:
    """The structures to segment with their examples: one from `text` and example files/arrays, or one per asked
    label of a dataset with k examples each from its bank."""
    if examples_from is None:
        shared, per_slice = file_examples(examples, len(query.model_slices), query.axis, normalization, example_label)
        return [Target(text, shared, per_slice)]
    dataset = examples_from if isinstance(examples_from, SliceDataset) else SliceDataset(examples_from)
    return bank_targets(dataset, bank_names(dataset, label, labels), text, k, query.model_slices)


def segment(pipeline, image: ImageInput, text: str | None = None,
            examples: Sequence[tuple[ImageInput, ImageInput]] = (), example_label: str | int | None = None,
            examples_from: str | Path | SliceDataset | None = None, label: str | None = None,
            labels: str | Sequence[str] | None = None, k: int = 3, axis: str = "axial", crop: bool = True,
            settings: Settings | None = None, progress: bool = False,
            callback: Callable[[float], None] | None = None) -> VolumeSegmentation:
    """Segment an image or volume with a `SegICLPipeline`: the volume-level entry point (`SegICLPipeline.segment`).

    Say what to segment with `text` and `examples` ((image, mask) pairs: 2-D slices, or 3-D volumes whose slice at
    each query slice's relative position is used; `example_label` names the structure of label-map masks), or with a
    dataset (`examples_from`: a built or `segicl data import`-ed folder) and `label` (one structure) or `labels`
    ("all", "a,b" or a list: one label map), k examples per slice from its bank. `axis` slices a volume; `crop` cuts
    it to its foreground first, as the training data was cut. `callback(fraction)` follows the progress (0..1)."""
    settings = (settings or Settings()).validate()
    check_prompt(text, examples, examples_from, label, labels, k)
    query = prepare_query(as_medical_image(image), axis, crop, settings.normalization == "ct")
    targets = prompt_targets(query, text, examples, example_label, examples_from, label, labels, k,
                             settings.normalization)
    result = segment_image(query, targets, pipeline, settings, as_label_map=labels is not None, progress=progress,
                           callback=callback)
    return VolumeSegmentation(query.to_file(result.mask), query.to_file(result.probabilities),
                              query.to_file(result.uncertainty), result.structures, result.timings, query.image,
                              len(query.model_slices))
