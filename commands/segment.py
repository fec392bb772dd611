"""`segicl segment`: a 2-D image or a 3-D volume, an instruction and examples -> a mask (or, with --labels, a label
map) in the input's exact geometry.

Examples come three ways: files (`--example IMAGE MASK`: a 2-D slice, or a 3-D volume whose slice at the query
slice's relative position is used, `--example-label` naming one label of a label map), or a bank
(`--examples-from DATASET --label NAME -k 3`: k different cases of a built or imported dataset, position-matched).
A volume is cut to its foreground first, the way the training data was (`segicl_data.volumes.crop_to_foreground`).
`prepare_query` + `segment_image` are the run itself, shared by the command and the web app (`segicl_commands.webapp`).
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segicl_commands.arguments import apply_config_flags
from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS

if TYPE_CHECKING:
    from segicl_data.imageio import MedicalImage
    from segicl_data.preprocess import SquareCrop


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
        from segicl_data.volumes import paste_crop

        return paste_crop(maps, self.crop, self.slices.shape) if self.crop else maps

    def to_file(self, display_maps: np.ndarray) -> np.ndarray:
        """Display-slice maps in the file's own voxel order and shape (what `write_image` writes beside it)."""
        from segicl_data.volumes import from_model_slices

        return from_model_slices(display_maps, self.image, self.axis)


@dataclass
class Settings:
    """How the pipeline runs: decoder steps x samples (the measured default), slices per batch, intensity mapping,
    and whether each mask keeps only its largest connected component."""

    steps: int = DEFAULT_STEPS
    samples: int = DEFAULT_SAMPLES
    batch_size: int = 16
    normalization: str = "percentile"
    seed: int = 0
    largest_component: bool = False


@dataclass
class SegmentResult:
    """`segment_image`'s answer on the query's display slices [S, H, W] (`Query.to_file` gives the file's grid):
    the mask (0/1, or the targets' values as a label map), the first target's probabilities and uncertainty (the
    spread over the samples), and the seconds spent in the vision tower, the LLM and the decoder."""

    mask: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    timings: dict = field(default_factory=dict)


def add_segment_command(commands, default_weights: Path) -> None:
    segment = commands.add_parser(
        "segment", help="segment an image or volume from text + examples",
        description="Segment a 2-D image or a 3-D volume (NIfTI, DICOM file or series folder, PNG/JPG, NPY) from an "
                    "instruction and up to 3 examples: files, or a bank of a labelled dataset (--examples-from). "
                    "Examples go through the same orientation rule as the query (README 'Orientation').")
    segment.add_argument("--image", type=Path, required=True, help="query image or volume")
    segment.add_argument("--text", default=None,
                         help='instruction, e.g. "Segment the white matter" (default with --examples-from: '
                              '"Segment the <label> in this <modality> slice.")')
    segment.add_argument("--example", nargs=2, action="append", type=Path, metavar=("IMAGE", "MASK"),
                         help="an example and its mask (repeat for several): a 2-D slice, or a 3-D volume and its label "
                              "map, whose slice at the query slice's relative position is used")
    segment.add_argument("--example-label", default=None,
                         help="the label of --example label maps that is the structure: a value, or a name of the "
                              "dataset.json beside the mask's folder (nnU-Net: labelsTr/..)")
    segment.add_argument("--examples-from", type=Path, default=None,
                         help="a built or imported dataset (`segicl data import`) whose labelled cases lend the examples")
    segment.add_argument("--label", default=None, help="with --examples-from: the structure (a label name or value)")
    segment.add_argument("--labels", default=None,
                         help="with --examples-from: 'all' or a comma list of labels: one label map with the dataset's "
                              "label values (each voxel the class of highest probability above 0.5)")
    segment.add_argument("-k", type=int, default=3, help="examples per slice from --examples-from (0: instruction only)")
    segment.add_argument("--out", type=Path, required=True, help="output mask (.nii.gz, .nii, .png, .npy)")
    segment.add_argument("--probabilities", type=Path, default=None, help="also write the probability map here")
    segment.add_argument("--uncertainty", type=Path, default=None, help="also write the per-pixel uncertainty here")
    segment.add_argument("--model", type=Path, default=default_weights, help="model folder (default: shipped tiny)")
    segment.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                         help=f"diffusion samples averaged; their spread is the uncertainty map (default: {DEFAULT_SAMPLES}, "
                              "chosen by `segicl bench speed`'s sampler grid: README 'Results')")
    segment.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                         help=f"sampler steps (default: {DEFAULT_STEPS}; with this model's x0 decoder more steps did "
                              "not raise the Dice)")
    segment.add_argument("--batch-size", type=int, default=16, help="slices per batch")
    segment.add_argument("--axis", default="axial", choices=("axial", "coronal", "sagittal"),
                         help="slicing direction for 3-D volumes")
    segment.add_argument("--normalization", default="percentile", choices=("percentile", "ct", "none"),
                         help="intensity mapping: MRI percentiles, CT window [-100, 200] HU, or none")
    segment.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True,
                         help="cut a volume to its foreground (the slices and the square that hold it) before "
                              "segmenting, as the training data was cut (default); --no-crop: the whole slices")
    segment.add_argument("--largest-component", action="store_true",
                         help="keep only the largest connected component of each mask, over the whole volume (nnU-Net's "
                              "post-processing: removes the specks left on slices without the structure, and any "
                              "second piece of a two-part structure; README \"Whole volumes\")")
    segment.add_argument("--registration-weight", type=float, default=None, metavar="W",
                         help="weight in [0, 1] of the example masks registered to the query (SimpleITK affine) in the "
                              "example prior, for queries with at least --registration-min-examples examples (0: off; "
                              "default: the model's setting, 0.5 for the shipped weights; about 0.06 s per example and "
                              "slice in `segicl bench speed`; README \"Registered examples, and the examples checking "
                              "the LLM\")")
    segment.add_argument("--registration-min-examples", type=int, default=None, metavar="N",
                         help="the fewest examples a query needs for the registered examples to enter its prior "
                              "(default: the model's setting, 4 for the shipped weights, so that with this command's "
                              "at most 3 examples they do not: chosen on training structures, README \"Peers\"; 2 "
                              "switches them on from 2 examples)")
    segment.add_argument("--check-examples", action=argparse.BooleanOptionalAction, default=None,
                         help="answer each example from the others and, where the example prior alone does better than "
                              "its mix with the LLM, follow the prior alone (SegICLConfig.examples_check_the_llm; "
                              "about twice the time per slice with position-matched examples, once per volume with "
                              "one example set; default: the model's setting, on for the shipped weights; README "
                              "\"Registered examples, and the examples checking the LLM\")")
    segment.add_argument("--seed", type=int, default=0)
    segment.set_defaults(handler=command_segment)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse combinations that cannot work, before anything is read."""
    if args.steps < 1 or args.samples < 1:
        raise ValueError(f"--steps and --samples must be >= 1, got {args.steps} and {args.samples}")
    if args.uncertainty is not None and args.samples < 2:
        raise ValueError("--uncertainty needs --samples >= 2: the uncertainty is the spread over the samples")
    if not args.model.exists():
        raise FileNotFoundError(f"model folder not found: {args.model} (train one with `make train-demo`)")
    if args.registration_weight is not None and not 0.0 <= args.registration_weight <= 1.0:
        raise ValueError(f"--registration-weight must be in [0, 1], got {args.registration_weight}")
    if args.examples_from is None:
        if args.label or args.labels:
            raise ValueError("--label and --labels name structures of a dataset: give it with --examples-from")
        if not args.text:
            raise ValueError("--text is required (or --examples-from DATASET --label NAME, which words it)")
        return
    if args.example:
        raise ValueError("give examples either as files (--example) or from a dataset (--examples-from), not both")
    if bool(args.label) == bool(args.labels):
        raise ValueError("--examples-from needs one of --label NAME (a mask) or --labels all|a,b (a label map)")
    if args.labels and (args.probabilities or args.uncertainty):
        raise ValueError("--probabilities and --uncertainty are written for one structure (--label), not --labels")
    if args.labels and args.text:
        raise ValueError("--labels words one instruction per label itself; leave --text out")
    if args.k < 0:
        raise ValueError(f"-k must be >= 0, got {args.k}")


def example_label_value(label: str | None, mask_path: Path) -> int | None:
    """--example-label as a label value: a number, or a name looked up in the dataset.json of the mask's dataset."""
    if label is None or label.isdigit():
        return None if label is None else int(label)
    from segicl_data.importer import read_label_names

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


def file_examples(pairs: list, query_slices: int, axis: str = "axial", normalization: str = "percentile",
                  example_label: str | None = None) -> tuple[list, list | None]:
    """Example files, (image path, mask path) pairs: (shared pairs, None) when all are 2-D; (empty, one list per
    slice) when any is a volume, each volume cut to its foreground and lending its slice at the query slice's
    relative position. `example_label` (a value or a dataset.json name) picks the structure of label-map masks."""
    from segicl_data.episodes import prompt_slice
    from segicl_data.imageio import read_image
    from segicl_data.preprocess import apply_crop, normalize_intensity
    from segicl_data.volumes import crop_to_foreground, load_example_slices

    stacks = []
    for image_path, mask_path in pairs:
        label = example_label_value(example_label, Path(mask_path))
        images, masks = load_example_slices(read_image(image_path), read_image(mask_path), axis, label)
        if len(images) > 1:
            images, crop = crop_to_foreground(images, normalization == "ct", labels=masks)
            masks = apply_crop(masks, crop)
        stacks.append((images, masks))
    if all(len(images) == 1 for images, _ in stacks):
        return [(images[0], masks[0]) for images, masks in stacks], None
    normalized = [(normalize_intensity(images, normalization), masks) for images, masks in stacks]
    return [], [[(images[prompt_slice(q, query_slices, len(images))], masks[prompt_slice(q, query_slices, len(images))])
                 for images, masks in normalized] for q in range(query_slices)]


def bank_names(dataset, label: str | None, labels: str | None) -> list[str]:
    """The structures asked for with --label NAME or --labels all|a,b."""
    from segicl_data.bank import bank_structures

    if label:
        return [label]
    if labels.strip().lower() == "all":
        structures = bank_structures(dataset)
        return sorted(structures, key=lambda name: structures[name].label_ids)
    return [name.strip() for name in labels.split(",") if name.strip()]


# A single 2-D query slice at relative position p of its volume is matched as slice p * POSITIONS of POSITIONS.
POSITIONS = 1000


def bank_targets(dataset, names: list[str], text: str | None, k: int, query_slices: int,
                 position: float | None = None) -> list[Target]:
    """One target per structure name of a dataset (`segicl_data.dataset.SliceDataset`), its k examples per query slice from
    the dataset's bank (k = 0: the instruction alone); `text` replaces the worded instruction. `position` (0 = the
    first slice of a volume, 1 = the last): where a single query slice lies in its volume, which the bank's
    position-matched examples follow; None: the query's own slices are the volume."""
    from segicl_data.bank import ExampleBank, find_structure

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
            bank = ExampleBank(dataset, name, k)
            if position is None:
                examples = bank.examples_per_slice(query_slices)
            else:
                examples = [bank.examples_for(min(int(position * POSITIONS), POSITIONS - 1), POSITIONS)]
            targets.append(Target(instruction, [], examples, value))
    return targets


def label_map(probabilities: list[np.ndarray], values: list[int], threshold: float = 0.5) -> np.ndarray:
    """Each voxel the value of the class with the highest probability, if above `threshold`, else 0."""
    stacked = np.stack(probabilities)
    best = stacked.argmax(axis=0)
    out = np.asarray(values, dtype=np.uint16)[best]
    out[stacked.max(axis=0) <= threshold] = 0
    return out


def prepare_query(image: MedicalImage, axis: str = "axial", crop: bool = True, ct: bool = False) -> Query:
    """A read image (`segicl_data.imageio.read_image`) as display slices; a volume cut to its foreground unless `crop` is
    off (`segicl_data.volumes.crop_to_foreground`, as the training slices were cut)."""
    from segicl_data.volumes import crop_to_foreground, to_model_slices

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
    outputs = []
    for index, target in enumerate(targets):
        def step(stage: str, done: int, total: int, index: int = index) -> None:
            passes_done = done + (total if stage == "decode" else 0)
            callback((index + passes_done / (2 * total)) / len(targets))

        outputs.append(pipeline(query.model_slices, target.instruction, target.examples, num_samples=settings.samples,
                                num_steps=settings.steps, batch_size=settings.batch_size,
                                normalization=settings.normalization, seed=settings.seed, progress=progress,
                                slice_examples=target.slice_examples, callback=None if callback is None else step,
                                largest_component=settings.largest_component))
    if as_label_map:
        mask = label_map([o.probabilities for o in outputs], [t.value for t in targets])
        if settings.largest_component:
            from segicl.pipeline import keep_largest_component

            for target in targets:
                mask[(mask == target.value) & ~keep_largest_component(mask == target.value)] = 0
    else:
        mask = outputs[0].mask
    timings = {key: sum(o.timings[key] for o in outputs) for key in ("vision_s", "llm_s", "decoder_s")}
    return SegmentResult(query.to_display(mask), query.to_display(outputs[0].probabilities),
                         query.to_display(outputs[0].uncertainty), timings)


def apply_prior_flags(model, registration_weight: float | None, check_examples: bool | None,
                      registration_min_examples: int | None = None) -> None:
    """`--registration-weight`, `--check-examples` and `--registration-min-examples` (None: keep the model's
    setting) on the model's example prior, refused naming the flag where the config refuses the setting or where a
    registration weight would change nothing (the model registers from more examples than it takes); the model
    unchanged when refused."""
    def registers_nothing(changed) -> str | None:
        if registration_weight and changed.prior_registration_min_examples > changed.max_examples:
            return (f"--registration-weight: the model registers examples from "
                    f"{changed.prior_registration_min_examples} examples on, more than the {changed.max_examples} it "
                    f"takes, so the weight would change nothing; add --registration-min-examples 2")
        return None

    apply_config_flags(model, [("--registration-weight", "prior_registration_weight", registration_weight),
                               ("--check-examples", "examples_check_the_llm", check_examples),
                               ("--registration-min-examples", "prior_registration_min_examples",
                                registration_min_examples)], refuse=registers_nothing)


def command_segment(args: argparse.Namespace) -> int:
    from segicl_data.dataset import SliceDataset
    from segicl_data.imageio import read_image, write_image
    from segicl.pipeline import SegICLPipeline

    check_flags(args)
    start = time.perf_counter()
    query = prepare_query(read_image(args.image), args.axis, args.crop, args.normalization == "ct")
    if args.examples_from is not None:
        dataset = SliceDataset(args.examples_from)
        targets = bank_targets(dataset, bank_names(dataset, args.label, args.labels), args.text, args.k,
                               len(query.model_slices))
    else:
        shared, per_slice = file_examples(args.example or [], len(query.model_slices), args.axis, args.normalization,
                                          args.example_label)
        targets = [Target(args.text, shared, per_slice)]
    pipeline = SegICLPipeline.from_pretrained(args.model)
    apply_prior_flags(pipeline.model, args.registration_weight, args.check_examples,
                      args.registration_min_examples)
    settings = Settings(args.steps, args.samples, args.batch_size, args.normalization, args.seed,
                        args.largest_component)
    result = segment_image(query, targets, pipeline, settings, as_label_map=bool(args.labels), progress=True)
    written = [write_image(args.out, query.to_file(result.mask), query.image)]
    for path, values in ((args.probabilities, result.probabilities), (args.uncertainty, result.uncertainty)):
        if path:
            written.append(write_image(path, query.to_file(values), query.image))
    seconds = result.timings
    what = f"{len(targets)} structure(s) " if len(targets) > 1 else ""
    print(f"segmented {what}{len(query.model_slices)} slice(s) in {time.perf_counter() - start:.1f} s: vision "
          f"{seconds['vision_s']:.2f} s, LLM {seconds['llm_s']:.2f} s, decoder {seconds['decoder_s']:.2f} s; wrote "
          f"{', '.join(str(p) for p in written)}")
    if args.labels:
        print("label values: " + json.dumps({t.instruction: t.value for t in targets}))
    return 0
