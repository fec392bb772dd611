"""`segicl bench folder`: what `segicl predict` saves over calling `segicl segment` once per case, on one folder.

The folder: `cases` volumes made from the held-out subject's slices (each shifted by a few voxels and rescaled in
intensity, so no two are equal), named as nnU-Net names test images. The prompt: an instruction and k 2-D examples
of one structure from the training templates (its largest slice in each), shared by every case, so `predict`
encodes it once. Three runs, each a real command in its own process, timed from start to exit:

- `segicl segment`, once per case (what a user without `predict` scripts): model load + prompt + case, every time;
- `segicl predict` over the folder, one process;
- `segicl predict` under `accelerate launch` with 2 processes of one thread each.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from segicl_data.bank import find_structure
from segicl_data.dataset import SliceDataset
from segicl_data.imageio import write_image


def write_cases(dataset: SliceDataset, volume: str, count: int, folder: Path, seed: int = 0) -> list[Path]:
    """`count` NIfTI volumes [H, W, S] from `volume`'s slices, each shifted by up to 3 voxels in-plane and scaled."""
    rng = np.random.default_rng(seed)
    slices = np.stack([dataset.image(volume, index) for index in range(dataset.volumes[volume]["n_slices"])])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        shift = rng.integers(-3, 4, size=2)
        moved = np.roll(slices, tuple(shift), axis=(1, 2)) * rng.uniform(0.8, 1.2) * 1000.0
        path = folder / f"case{index:03d}_0000.nii.gz"
        nib.save(nib.Nifti1Image(moved.transpose(1, 2, 0).astype(np.float32), np.eye(4)), path)
        paths.append(path)
    return paths


def write_examples(dataset: SliceDataset, structure: str, k: int, folder: Path) -> list[tuple[Path, Path]]:
    """k example pairs (NPY) of `structure`: its largest slice in each of k training cases."""
    found = find_structure(dataset, structure)
    pairs = []
    for row_index in found.rows[:k]:
        row = dataset.rows[row_index]
        best = row["slices"][int(np.argmax(row["areas"]))]
        image, mask = write_image(folder / f"{row['volume']}_image.npy", dataset.image(row["volume"], best)), \
            write_image(folder / f"{row['volume']}_mask.npy", dataset.mask(row_index, best).astype(np.uint8))
        pairs.append((image, mask))
    if len(pairs) < k:
        raise ValueError(f"{structure!r} has {len(pairs)} training cases, fewer than k = {k}")
    return pairs


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def run_folder(dataset: SliceDataset, out_dir: Path, cases: int, structure: str, k: int, model: Path,
               log=print) -> dict:
    """The three runs on one folder; writes folder.json into out_dir."""
    work = out_dir / "folder"
    inputs = write_cases(dataset, "colin27", cases, work / "imagesTs")
    examples = write_examples(dataset, structure, k, work / "examples")
    prompt = ["--text", f"Segment the {structure}", "--model", str(model)]
    for image, mask in examples:
        prompt += ["--example", str(image), str(mask)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "segicl_commands.cli"]
    per_call = [timed([*cli, "segment", "--image", str(path), "--out", str(work / "segment" / f"{path.name}"),
                       *prompt], env) for path in inputs]
    log(f"segment per case: {np.mean(per_call):.2f} s")
    folder_s = timed([*cli, "predict", "-i", str(work / "imagesTs"), "-o", str(work / "predict"), *prompt], env)
    log(f"predict, 1 process: {folder_s / cases:.2f} s per case")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "segicl_commands.cli"]
    two_s = timed([*launch, "predict", "-i", str(work / "imagesTs"), "-o", str(work / "predict2"), *prompt],
                  {**env, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    log(f"predict, 2 processes x 1 thread: {two_s / cases:.2f} s per case")
    records = json.loads((work / "predict" / "predictions.json").read_text())["cases"]
    result = {"setting": f"{cases} volumes of {dataset.volumes['colin27']['n_slices']} "
                         f"slices (the held-out subject, shifted), k = {k} 2-D examples of the {structure}, model "
                         f"{model.name}; each run a fresh process, wall time from start to exit; "
                         f"{os.cpu_count()} CPU cores",
              "cases": cases,
              "segment_per_case_s": round(float(np.mean(per_call)), 3),
              "segment_per_case_range_s": [round(float(min(per_call)), 3), round(float(max(per_call)), 3)],
              "predict_per_case_s": round(folder_s / cases, 3),
              "predict_in_process_per_case_s": round(float(np.mean([r["seconds"] for r in records])), 3),
              "predict_two_processes_per_case_s": round(two_s / cases, 3),
              "segment_over_predict": round(float(np.mean(per_call)) / (folder_s / cases), 2)}
    (out_dir / "folder.json").write_text(json.dumps(result, indent=1))
    return result


def folder_lines(result: dict) -> list[str]:
    """The results page's part: seconds per case for each way of segmenting the folder."""
    return ["### A whole folder (`segicl bench folder`)", "", result["setting"], "",
            "| how | seconds per case |", "|---|---|",
            f"| `segicl segment`, once per case | {result['segment_per_case_s']:.2f} "
            f"(range {result['segment_per_case_range_s'][0]:.2f}-{result['segment_per_case_range_s'][1]:.2f}) |",
            f"| `segicl predict`, 1 process | {result['predict_per_case_s']:.2f} (of which in the model's calls: "
            f"{result['predict_in_process_per_case_s']:.2f}) |",
            f"| `segicl predict` under `accelerate launch`, 2 processes x 1 thread | "
            f"{result['predict_two_processes_per_case_s']:.2f} |", "",
            f"`predict` takes {1 / result['segment_over_predict']:.2f}x the time of `segment` per case "
            f"({result['segment_over_predict']:.2f}x faster): the model loads once and the prompt is encoded once.", ""]
