"""The `segicl mvg` (inference) and `segicl mvg-eval` (test-split evaluation) subcommands.

Registered into the `segicl` command line by `segicl_commands.cli.build_parser` through `add_mvg_commands`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from segicl_commands.arguments import check_at_least, check_out_dir
from segicl_commands.datasets import add_dataset_arguments, open_dataset
from segicl_data.model_folders import check_model_folder
from mvg_head.config import COLOURINGS, TASKS
from segicl_weights import MVG_TINY

DEFAULT_MVG_WEIGHTS = MVG_TINY
OUTPUT_SCALES = ("input", "unit")


def output_to_write(result, args: argparse.Namespace):
    """What `segicl mvg` writes: the label map (segmentation), the [0, 1] image (--output-scale unit) or the image in
    the query's intensity scale. A PNG holds 8-bit grey: an output in the query's scale goes there rounded, and only
    when it lies in 0..255 (as a PNG query's does)."""
    import numpy as np

    from segicl_data.imageio import ending_of

    if args.task == "segmentation":
        return result.output
    if args.output_scale == "unit":
        return result.output_normalized
    if ending_of(args.out) != ".png":
        return result.output
    grey = np.rint(result.output)
    if grey.min() < 0 or grey.max() > 255:
        raise ValueError(f"--out {args.out}: a PNG holds 0..255, but the output in the query's intensity scale spans "
                         f"[{result.output.min():g}, {result.output.max():g}]; write .nii.gz or .npy instead, or "
                         f"pass --output-scale unit")
    return grey / 255.0  # the PNG writer stores a [0, 1] float image as rint(x * 255): the rounded grey values


def dataset_prompt(args: argparse.Namespace):
    """--prompt-from: a labelled training case of an imported dataset as the prompt volume (segmentation only)."""
    from segicl_data.bank import prompt_volume
    from segicl_data.dataset import SliceDataset

    if args.task != "segmentation":
        raise ValueError(f"--prompt-from lends label maps, the prompt of segmentation; --task {args.task} needs "
                         "--prompt-image and --prompt-target")
    return prompt_volume(SliceDataset(args.prompt_from), args.prompt_case)


def read_finite(path: Path):
    """An input image, refused naming its file when it holds NaN/inf voxels."""
    from segicl_data.imageio import check_finite, read_image

    image = read_image(path)
    check_finite(image)
    return image


def command_mvg(args: argparse.Namespace) -> int:
    from segicl_data.imageio import write_image
    from segicl_data.preprocess import resize_slices
    from segicl_data.volumes import crop_to_foreground, from_model_slices, paste_crop, to_model_slices
    from mvg_head.pipeline import MVGPipeline

    check_model_folder(args.model, "MVG")
    if (args.prompt_from is None) == (args.prompt_image is None or args.prompt_target is None):
        raise ValueError("give the prompt either as --prompt-image and --prompt-target, or with --prompt-from DATASET")
    start = time.perf_counter()
    query = read_finite(args.image)
    slices = to_model_slices(query, args.axis)
    crop = None
    if args.prompt_from is not None:
        prompt_images, prompt_targets, case = dataset_prompt(args)
        if len(slices) > 1:  # the dataset's cases are cut to their foreground: the query is cut the same way
            slices, crop = crop_to_foreground(slices, args.normalization == "ct")
        slices = resize_slices(slices, prompt_images.shape[-1], labels=False)  # MVG wants one grid for both
        print(f"prompt: case {case} of {args.prompt_from} ({len(prompt_images)} slices, position-matched)")
    else:
        prompt_images = to_model_slices(read_finite(args.prompt_image), args.axis)
        prompt_targets = to_model_slices(read_finite(args.prompt_target), args.axis)
    region = to_model_slices(read_finite(args.region), args.axis) > 0 if args.region else None
    pipeline = MVGPipeline.from_pretrained(args.model)
    result = pipeline(slices, prompt_images, prompt_targets, args.task, mode=args.mode,
                      normalization=args.normalization, colouring=args.colouring, region=region,
                      batch_size=args.batch_size, seed=args.seed, progress=True)
    output = output_to_write(result, args)
    if args.prompt_from is not None:
        shape = to_model_slices(query, args.axis).shape
        output = resize_slices(output, (crop.size, crop.size) if crop else shape[1:], labels=True)
        if crop is not None:
            output = paste_crop(output, crop, shape)
    path = write_image(args.out, from_model_slices(output, query, args.axis), query)
    scale = ""
    if args.task != "segmentation":
        low, high = result.intensity_range
        scale = (" in [0, 1]" if args.output_scale == "unit" else
                 f" in the query's intensity scale ([0, 1] -> [{low:g}, {high:g}])")
    print(f"mvg {args.task}: {len(slices)} slice(s) in {time.perf_counter() - start:.1f} s; wrote {path}{scale}")
    return 0


def command_mvg_eval(args: argparse.Namespace) -> int:
    from mvg_head.evaluation import run_evaluation

    check_model_folder(args.model, "MVG")
    check_at_least(args, episodes=1, image_episodes=1, min_area=1)
    check_out_dir(args.out_dir)
    dataset = open_dataset(args)
    result = run_evaluation(args.model, args.out_dir, dataset, args.episodes, args.image_episodes, args.seed,
                            args.min_area, progress=True, tasks=tuple(args.tasks), transforms=args.transforms)
    print((args.out_dir / "report.md").read_text())
    print(f"wrote {args.out_dir / 'eval.json'}")
    return 0 if result else 1


def add_mvg_commands(commands) -> None:
    """Add `mvg` and `mvg-eval` to the `segicl` subcommands."""
    mvg = commands.add_parser(
        "mvg", help="in-context image-to-image (MVG): segmentation, synthesis, denoising, inpainting",
        description="Run an MVG task on a 2-D image or a 3-D volume (NIfTI, DICOM, PNG/JPG, NPY) from one prompt "
                    "pair. With volumes, query slice n of N takes prompt slice floor(n * N_prompt / N). The output "
                    "has the input's shape and geometry.")
    mvg.add_argument("--task", required=True, choices=TASKS)
    mvg.add_argument("--prompt-image", type=Path, default=None, help="prompt image (2-D slice or volume)")
    mvg.add_argument("--prompt-target", type=Path, default=None,
                     help="the prompt's label: an integer label map (segmentation) or the target image")
    mvg.add_argument("--prompt-from", type=Path, default=None,
                     help="segmentation: an imported dataset (`segicl data import`) whose labelled training case is "
                          "the prompt volume, position-matched slice by slice (instead of --prompt-image/-target)")
    mvg.add_argument("--prompt-case", default=None, help="with --prompt-from: the case (default: the first training case)")
    mvg.add_argument("--image", type=Path, required=True, help="query image or volume")
    mvg.add_argument("--out", type=Path, required=True, help="output (.nii.gz, .nii, .png, .npy)")
    mvg.add_argument("--model", type=Path, default=DEFAULT_MVG_WEIGHTS, help="model folder (default: shipped tiny)")
    mvg.add_argument("--mode", choices=("masked", "autoregressive"), default=None,
                     help="inference form (default: autoregressive, the form the shipped weights were trained "
                          "for; masked: the paper's [P_x, P_y, X, mask] form)")
    mvg.add_argument("--colouring", choices=COLOURINGS, default=None,
                     help="segmentation: override the model's label colouring")
    mvg.add_argument("--region", type=Path, default=None, help="inpainting: the region to restore (mask file)")
    mvg.add_argument("--axis", default="axial", choices=("axial", "coronal", "sagittal"))
    mvg.add_argument("--normalization", default="percentile", choices=("percentile", "ct", "none"),
                     help="intensity mapping to [0, 1]: MRI percentiles, CT window [-100, 200] HU, or none")
    mvg.add_argument("--output-scale", default="input", choices=OUTPUT_SCALES,
                     help="synthesis / denoising / inpainting: input (default) maps the model's [0, 1] output back "
                          "to the query's intensities by the inverse of --normalization (ct: 0 -> -100 HU, 1 -> 200 "
                          "HU; percentile: 0 -> the query's 0.5th percentile, 1 -> its 99.5th; none: unchanged), so "
                          "intensities the window or the percentiles clipped come back at those edges (air as "
                          "-100 HU, bone as 200 HU); inpainting keeps the query's own values outside --region; a "
                          ".png --out takes it rounded, if it lies in 0..255. unit: the [0, 1] output. A "
                          "segmentation label map is written as labels either way")
    mvg.add_argument("--batch-size", type=int, default=32)
    mvg.add_argument("--seed", type=int, default=0, help="seed of the random label colours")
    mvg.set_defaults(handler=command_mvg)

    evaluation = commands.add_parser("mvg-eval", help="MVG test-split figures beside the trivial baselines",
                                     description="Writes <out-dir>/eval.json and report.md.")
    add_dataset_arguments(evaluation)
    evaluation.add_argument("--model", type=Path, default=DEFAULT_MVG_WEIGHTS)
    evaluation.add_argument("--out-dir", type=Path, default=Path("runs/mvg"))
    evaluation.add_argument("--episodes", type=int, default=300, help="segmentation episodes per structure split")
    evaluation.add_argument("--image-episodes", type=int, default=150, help="episodes per image-to-image task")
    evaluation.add_argument("--min-area", type=int, default=64, help="minimum query structure area (pixels)")
    evaluation.add_argument("--seed", type=int, default=0)
    evaluation.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks to evaluate")
    evaluation.add_argument("--transforms", action=argparse.BooleanOptionalAction, default=True,
                            help="independent random affines on prompt and query pairs (default); --no-transforms: "
                                 "the pairs as registered (templates and test subject share one space)")
    evaluation.set_defaults(handler=command_mvg_eval)
