"""`segicl segment`: a 2-D image or a 3-D volume, an instruction and examples -> a mask (or, with --labels, a label
map) in the input's exact geometry.

Examples come three ways: files (`--example IMAGE MASK`: a 2-D slice, or a 3-D volume whose slice at the query
slice's relative position is used, `--example-label` naming one label of a label map), or a bank
(`--examples-from DATASET --label NAME -k 3`: k different cases of a built or imported dataset, position-matched).
A volume is cut to its foreground first, the way the training data was (`data.volumes.crop_to_foreground`).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS


@dataclass
class Target:
    """One structure to segment: its instruction, its examples (shared or one list per slice), its output value."""

    instruction: str
    examples: list
    slice_examples: list | None
    value: int = 1


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
    from data.importer import read_label_names

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


def file_examples(args: argparse.Namespace, query_slices: int, ct: bool) -> tuple[list, list | None]:
    """--example files: (shared pairs, None) when all are 2-D; (empty, one list per slice) when any is a volume,
    each volume cut to its foreground and lending its slice at the query slice's relative position."""
    from data.episodes import prompt_slice
    from data.imageio import read_image
    from data.preprocess import apply_crop, normalize_intensity
    from data.volumes import crop_to_foreground, load_example_slices

    stacks = []
    for image_path, mask_path in args.example or []:
        label = example_label_value(args.example_label, mask_path)
        images, masks = load_example_slices(read_image(image_path), read_image(mask_path), args.axis, label)
        if len(images) > 1:
            images, crop = crop_to_foreground(images, ct, labels=masks)
            masks = apply_crop(masks, crop)
        stacks.append((images, masks))
    if all(len(images) == 1 for images, _ in stacks):
        return [(images[0], masks[0]) for images, masks in stacks], None
    normalized = [(normalize_intensity(images, args.normalization), masks) for images, masks in stacks]
    return [], [[(images[prompt_slice(q, query_slices, len(images))], masks[prompt_slice(q, query_slices, len(images))])
                 for images, masks in normalized] for q in range(query_slices)]


def bank_targets(args: argparse.Namespace, query_slices: int) -> list[Target]:
    """One target per structure asked for with --label / --labels, its examples from the dataset's bank."""
    from data.bank import ExampleBank, bank_structures, find_structure
    from data.dataset import SliceDataset

    dataset = SliceDataset(args.examples_from)
    if args.label:
        names = [args.label]
    elif args.labels.strip().lower() == "all":
        structures = bank_structures(dataset)
        names = sorted(structures, key=lambda name: structures[name].label_ids)
    else:
        names = [name.strip() for name in args.labels.split(",") if name.strip()]
    targets = []
    for name in names:
        structure = find_structure(dataset, name)
        instruction = args.text or f"Segment the {structure.name} in this {structure.modality} slice."
        value = structure.label_ids[0] if len(structure.label_ids) == 1 else len(targets) + 1
        if args.k == 0:
            targets.append(Target(instruction, [], None, value))
        else:
            bank = ExampleBank(dataset, name, args.k)
            targets.append(Target(instruction, [], bank.examples_per_slice(query_slices), value))
    return targets


def label_map(probabilities: list[np.ndarray], values: list[int], threshold: float = 0.5) -> np.ndarray:
    """Each voxel the value of the class with the highest probability, if above `threshold`, else 0."""
    stacked = np.stack(probabilities)
    best = stacked.argmax(axis=0)
    out = np.asarray(values, dtype=np.uint16)[best]
    out[stacked.max(axis=0) <= threshold] = 0
    return out


def command_segment(args: argparse.Namespace) -> int:
    from data.imageio import read_image, write_image
    from data.volumes import crop_to_foreground, from_model_slices, paste_crop, to_model_slices
    from segicl.pipeline import SegICLPipeline

    check_flags(args)
    start = time.perf_counter()
    query = read_image(args.image)
    slices = to_model_slices(query, args.axis)
    ct = args.normalization == "ct"
    crop = None
    if args.crop and len(slices) > 1:
        model_slices, crop = crop_to_foreground(slices, ct)
    else:
        model_slices = slices
    if args.examples_from is not None:
        targets = bank_targets(args, len(model_slices))
    else:
        shared, per_slice = file_examples(args, len(model_slices), ct)
        targets = [Target(args.text, shared, per_slice)]
    pipeline = SegICLPipeline.from_pretrained(args.model)
    outputs = []
    for target in targets:
        outputs.append(pipeline(model_slices, target.instruction, target.examples, num_samples=args.samples,
                                num_steps=args.steps, batch_size=args.batch_size, normalization=args.normalization,
                                seed=args.seed, progress=True, slice_examples=target.slice_examples))

    def to_file_grid(maps: np.ndarray) -> np.ndarray:
        return from_model_slices(paste_crop(maps, crop, slices.shape) if crop else maps, query, args.axis)

    if args.labels:
        result = label_map([o.probabilities for o in outputs], [t.value for t in targets])
    else:
        result = outputs[0].mask
    written = [write_image(args.out, to_file_grid(result), query)]
    for path, values in ((args.probabilities, outputs[0].probabilities), (args.uncertainty, outputs[0].uncertainty)):
        if path:
            written.append(write_image(path, to_file_grid(values), query))
    seconds = {key: sum(o.timings[key] for o in outputs) for key in ("vision_s", "llm_s", "decoder_s")}
    what = f"{len(targets)} structure(s) " if len(targets) > 1 else ""
    print(f"segmented {what}{len(model_slices)} slice(s) in {time.perf_counter() - start:.1f} s: vision "
          f"{seconds['vision_s']:.2f} s, LLM {seconds['llm_s']:.2f} s, decoder {seconds['decoder_s']:.2f} s; wrote "
          f"{', '.join(str(p) for p in written)}")
    if args.labels:
        print("label values: " + json.dumps({t.instruction: t.value for t in targets}))
    return 0
