"""`segicl segment`: a 2-D image or a 3-D volume, an instruction and examples -> a mask (or, with --labels, a label
map) in the input's exact geometry. A thin caller of the volume-level API (`segicl.volume.segment`, which
`SegICLPipeline.segment` and the web app use too).

Examples come three ways: files (`--example IMAGE MASK`: a 2-D slice, or a 3-D volume whose slice at the query
slice's relative position is used, `--example-label` naming one label of a label map), or a bank
(`--examples-from DATASET --label NAME -k 3`: k different cases of a built or imported dataset, position-matched).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS
from segicl_commands.arguments import apply_config_flags


def add_segment_command(commands, default_weights: Path) -> None:
    segment = commands.add_parser(
        "segment", help="segment an image or volume from text + examples",
        description="Segment a 2-D image or a 3-D volume (NIfTI, DICOM file or series folder, PNG/JPG, NPY) from an "
                    "instruction and up to 3 examples: files, or a bank of a labelled dataset (--examples-from). "
                    "Examples go through the same orientation rule as the query (docs: explanation/orientation).")
    segment.add_argument("--image", type=Path, required=True, help="query image or volume")
    add_prompt_arguments(segment)
    segment.add_argument("--out", type=Path, required=True, help="output mask (.nii.gz, .nii, .png, .npy)")
    segment.add_argument("--probabilities", type=Path, default=None, help="also write the probability map here")
    segment.add_argument("--uncertainty", type=Path, default=None, help="also write the per-pixel uncertainty here")
    add_model_arguments(segment, default_weights)
    segment.set_defaults(handler=command_segment)


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """What to segment: an instruction with example files, or a dataset's structures with examples from its bank."""
    parser.add_argument("--text", default=None,
                        help='instruction, e.g. "Segment the white matter" (default with --examples-from: '
                             '"Segment the <label> in this <modality> slice.")')
    parser.add_argument("--example", nargs=2, action="append", type=Path, metavar=("IMAGE", "MASK"),
                        help="an example and its mask (repeat for several): a 2-D slice, or a 3-D volume and its label "
                             "map, whose slice at the query slice's relative position is used")
    parser.add_argument("--example-label", default=None,
                        help="the label of --example label maps that is the structure: a value, or a name of the "
                             "dataset.json beside the mask's folder (nnU-Net: labelsTr/..)")
    parser.add_argument("--examples-from", type=Path, default=None,
                        help="a built or imported dataset (`segicl data import`) whose labelled cases lend the examples")
    parser.add_argument("--label", default=None, help="with --examples-from: the structure (a label name or value)")
    parser.add_argument("--labels", default=None,
                        help="with --examples-from: 'all' or a comma list of labels: one label map with the dataset's "
                             "label values (each voxel the class of highest probability above 0.5)")
    parser.add_argument("-k", type=int, default=3, help="examples per slice from --examples-from (0: instruction only)")


def add_model_arguments(parser: argparse.ArgumentParser, default_weights: Path) -> None:
    """The model and how it runs: decoder steps x samples, slicing, intensities, postprocessing."""
    parser.add_argument("--model", type=Path, default=default_weights, help="model folder (default: shipped tiny)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"diffusion samples averaged; their spread is the uncertainty map (default: {DEFAULT_SAMPLES}, "
                             "chosen by `segicl bench speed`'s sampler grid: docs/results)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"sampler steps (default: {DEFAULT_STEPS}; with this model's x0 decoder more steps did "
                             "not raise the Dice)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per batch")
    parser.add_argument("--axis", default="axial", choices=("axial", "coronal", "sagittal"),
                        help="slicing direction for 3-D volumes")
    parser.add_argument("--normalization", default="percentile", choices=("percentile", "ct", "none"),
                        help="intensity mapping: MRI percentiles, CT window [-100, 200] HU, or none")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True,
                        help="cut a volume to its foreground (the slices and the square that hold it) before "
                             "segmenting, as the training data was cut (default); --no-crop: the whole slices")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only the largest connected component of each mask, over the whole volume (nnU-Net's "
                             "post-processing: removes the specks left on slices without the structure, and any "
                             "second piece of a two-part structure; docs/results, whole volumes)")
    parser.add_argument("--views", type=int, default=1,
                        help="test-time augmentation: segment 1 to 8 views of the query and its examples together "
                             "(flips, quarter turns) and average them; the uncertainty includes their spread; each "
                             "view costs one more run (default: 1, none)")
    parser.add_argument("--example-sets", type=int, default=4,
                        help="with more examples than the model reads (3 for the shipped weights): average over up to "
                             "this many subsets of them, each one more run (default: 4)")
    parser.add_argument("--register-examples", action="store_true",
                        help="also register the examples to every query slice (affine) and fuse their masks "
                             "(STAPLE) with the model's answer, at the weight the examples choose by answering one "
                             "another; needs 2 or more examples. Worth it off the training data (slices along "
                             "another axis: +0.04 Dice at k = 3 and +0.09 at k = 5, coronal); up to 3 more runs "
                             "and a registration per example and slice (docs: research/registered-examples)")
    parser.add_argument("--check-examples", action=argparse.BooleanOptionalAction, default=None,
                        help="answer each example from the others and, where the example prior alone does better than "
                             "its mix with the LLM, follow the prior alone (SegICLConfig.examples_check_the_llm; "
                             "about twice the time per slice with position-matched examples, once per volume with "
                             "one example set; default: the model's setting, on for the shipped weights; docs: "
                             "research/registered-examples)")
    parser.add_argument("--seed", type=int, default=0)


def check_model_flags(args: argparse.Namespace, uncertainty: bool) -> None:
    """Refuse prompt and model flags that cannot work, before anything is read (`uncertainty`: a map is wanted)."""
    from segicl.volume import check_prompt

    settings_from(args)
    if uncertainty and args.samples < 2:
        raise ValueError("--uncertainty needs --samples >= 2: the uncertainty is the spread over the samples")
    if not args.model.exists():
        raise FileNotFoundError(f"model folder not found: {args.model} (train one with `segicl train --recipe "
                                "segicl-tiny`)")
    if args.labels and (args.probabilities or args.uncertainty):
        raise ValueError("--probabilities and --uncertainty are written for one structure (--label), not --labels")
    check_prompt(args.text, args.example or [], args.examples_from, args.label, args.labels, args.k)


def settings_from(args: argparse.Namespace):
    """The run's `segicl.volume.Settings`, validated."""
    from segicl.volume import Settings

    return Settings(args.steps, args.samples, args.batch_size, args.normalization, args.seed,
                    args.largest_component, args.views, args.example_sets, args.register_examples).validate()


def prompt_from(args: argparse.Namespace) -> dict:
    """`SegICLPipeline.segment`'s keyword arguments from the prompt and slicing flags."""
    return dict(example_label=args.example_label, examples_from=args.examples_from, label=args.label,
                labels=args.labels, k=args.k, axis=args.axis, crop=args.crop, settings=settings_from(args))


def load_pipeline(args: argparse.Namespace, device: str = "cpu"):
    """The model of --model with --check-examples applied (None keeps the model's setting)."""
    from segicl.pipeline import SegICLPipeline

    pipeline = SegICLPipeline.from_pretrained(args.model, device)
    apply_config_flags(pipeline.model, [("--check-examples", "examples_check_the_llm", args.check_examples)])
    return pipeline


def command_segment(args: argparse.Namespace) -> int:
    from segicl_data.imageio import check_not_constant, read_image

    check_model_flags(args, uncertainty=args.uncertainty is not None)
    start = time.perf_counter()
    # A file that cannot be read, or that holds nothing to segment, is refused before the model loads.
    image = read_image(args.image)
    check_not_constant(image.array, str(args.image))
    pipeline = load_pipeline(args)
    result = pipeline.segment(image, args.text, args.example or [], progress=True, **prompt_from(args))
    written = [result.save(args.out)]
    for path, what in ((args.probabilities, "probabilities"), (args.uncertainty, "uncertainty")):
        if path:
            written.append(result.save(path, what))
    seconds = result.timings
    what = f"{len(result.label_values)} structure(s) " if len(result.label_values) > 1 else ""
    print(f"segmented {what}{result.slices} slice(s) in {time.perf_counter() - start:.1f} s: vision "
          f"{seconds['vision_s']:.2f} s, LLM {seconds['llm_s']:.2f} s, decoder {seconds['decoder_s']:.2f} s; wrote "
          f"{', '.join(str(p) for p in written)}")
    if args.labels:
        print("label values: " + json.dumps(result.label_values))
    return 0
