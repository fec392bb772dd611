"""`segicl predict -i DIR -o DIR`: every case of a folder with one prompt, nnU-Net's `nnUNetv2_predict` conventions.

The cases (`segicl_data.cases`: NIfTI, NPY, PNG, DICOM files and series folders, nnU-Net's CASE_0000 naming) are
segmented with the prompts of `segicl segment`; the instruction and examples are encoded once per structure for the
whole folder (`SegICLPipeline` keeps the encoded context). Each case's mask (and, asked for, its probabilities and
uncertainty) is written in its input's geometry, then its record (`.predict/CASE.json`: seconds and uncertainty per
structure); `predictions.json` gathers the records, with the cases ranked by uncertainty (the ones to check first).

Resumable: a case with its record and its files is skipped, files are written whole or not at all, so a killed run
re-run finishes the folder. Scale-out: the cases are split between the processes that `accelerate launch` (or
torchrun) starts, and between jobs with --num-parts / --part-id; every process segments its own share.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from segicl_commands.segment import add_model_arguments, add_prompt_arguments, check_model_flags, load_pipeline, \
    prompt_from

RECORDS = ".predict"
RUN_FILE = "run.json"


def add_predict_command(commands, default_weights: Path) -> None:
    predict = commands.add_parser(
        "predict", help="segment every case of a folder (nnU-Net style), resumable, sharded across processes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("-i", "--input", type=Path, required=True,
                         help="folder of cases: image files (CASE_0000.nii.gz nnU-Net naming understood) or DICOM "
                              "series folders")
    predict.add_argument("-o", "--output", type=Path, required=True,
                         help="folder for CASE.nii.gz (the input's format for PNG/NPY) and predictions.json")
    add_prompt_arguments(predict)
    predict.add_argument("--probabilities", action="store_true", help="also write CASE_probabilities per case")
    predict.add_argument("--uncertainty", action="store_true", help="also write CASE_uncertainty per case")
    predict.add_argument("--num-parts", type=int, default=1,
                         help="split the cases into this many parts, one per job (as nnUNetv2_predict -num_parts)")
    predict.add_argument("--part-id", type=int, default=0, help="the part this job segments, 0..num-parts-1")
    predict.add_argument("--overwrite", action="store_true",
                         help="segment every case again, also those already finished in --output")
    add_model_arguments(predict, default_weights)
    predict.set_defaults(handler=command_predict)


def run_description(args: argparse.Namespace) -> dict:
    """What makes two runs' predictions comparable: the model, the prompt and the settings (not the sharding)."""
    keys = ("text", "example", "example_label", "examples_from", "label", "labels", "k", "model", "samples", "steps",
            "axis", "normalization", "crop", "largest_component", "views", "example_sets", "register_examples",
            "check_examples", "seed", "probabilities", "uncertainty")
    return json.loads(json.dumps({key: getattr(args, key) for key in keys}, default=str))


def check_same_run(output: Path, description: dict, overwrite: bool) -> None:
    """Refuse to resume into a folder whose finished cases came from another model, prompt or setting."""
    run_file = output / RECORDS / RUN_FILE
    if overwrite or not run_file.exists():
        return
    earlier = json.loads(run_file.read_text())
    changed = sorted(key for key in description if earlier.get(key) != description[key])
    if changed:
        raise ValueError(f"{output} holds predictions made with other settings ({', '.join(changed)} differ): "
                         "choose another --output, or --overwrite to segment every case again")


def write_json(path: Path, data) -> None:
    """A JSON file written whole or not at all (`segicl_data.atomic`)."""
    from segicl_data.atomic import write_text

    write_text(path, json.dumps(data, indent=1))


def case_files(case, output: Path, args: argparse.Namespace) -> dict[str, Path]:
    files = {"mask": case.output(output)}
    for what in ("probabilities", "uncertainty"):
        if getattr(args, what):
            files[what] = case.output(output, what)
    return files


def is_finished(case, output: Path, args: argparse.Namespace) -> bool:
    return (output / RECORDS / f"{case.name}.json").exists() and all(p.exists() for p in
                                                                   case_files(case, output, args).values())


def predict_case(pipeline, case, output: Path, args: argparse.Namespace, callback=None) -> dict:
    """Segment one case, write its files, then its record (last: a record means the case is finished).
    `callback(fraction)` follows the case's progress; an exception it raises stops the case (the web app's cancel)."""
    start = time.perf_counter()
    result = pipeline.segment(case.path, args.text, args.example or [], callback=callback, **prompt_from(args))
    files = case_files(case, output, args)
    for what, path in files.items():
        result.save(path, what)
    record = {"case": case.name, "input": str(case.path), "files": {what: p.name for what, p in files.items()},
              "slices": result.slices, "seconds": round(time.perf_counter() - start, 3),
              "uncertainty": max(s["uncertainty"] for s in result.structures.values()),
              "structures": result.structures}
    write_json(output / RECORDS / f"{case.name}.json", record)
    return record


def write_predictions(output: Path, cases: list, description: dict) -> dict:
    """predictions.json from every finished case's record, the cases ranked by uncertainty (highest first)."""
    records = [json.loads((output / RECORDS / f"{case.name}.json").read_text()) for case in cases
               if (output / RECORDS / f"{case.name}.json").exists()]
    ranked = sorted(records, key=lambda record: (-record["uncertainty"], record["case"]))
    summary = {"run": description, "cases": records, "finished": len(records), "total": len(cases),
               "ranked_by_uncertainty": [record["case"] for record in ranked]}
    write_json(output / "predictions.json", summary)
    return summary


def prepare_output(output: Path, description: dict, overwrite: bool, record_run: bool = True) -> None:
    """Refuse a folder of another run, remove what a killed earlier run was writing, record this run's description
    (`record_run`: one process of several does)."""
    from segicl_data.atomic import remove_stale_partials

    check_same_run(output, description, overwrite)
    (output / RECORDS).mkdir(parents=True, exist_ok=True)
    for folder in (output, output / RECORDS):
        remove_stale_partials(folder)
    if record_run:
        write_json(output / RECORDS / RUN_FILE, description)


def process_share() -> tuple[int, int, object | None]:
    """(this process's index, the process count, the accelerate state to wait on) under `accelerate launch` or
    torchrun; (0, 1, None) for a plain run."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state


def command_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from segicl_data.cases import list_input_cases, shard

    check_model_flags(args, uncertainty=args.uncertainty)
    cases = list_input_cases(args.input)
    rank, processes, state = process_share()
    mine = shard(shard(cases, args.num_parts, args.part_id), processes, rank)
    description = run_description(args)
    prepare_output(args.output, description, args.overwrite, record_run=rank == 0)
    todo = [case for case in mine if args.overwrite or not is_finished(case, args.output, args)]
    pipeline = load_pipeline(args, "cpu" if state is None else state.device) if todo else None
    start = time.perf_counter()
    for case in tqdm(todo, desc=f"cases (process {rank})" if processes > 1 else "cases", unit="case", disable=None,
                     position=rank):
        predict_case(pipeline, case, args.output, args)
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        summary = write_predictions(args.output, cases, description)
        here = f" by process 0 of {processes}" if processes > 1 else ""
        print(f"{len(todo)} case(s) segmented{here}, {len(mine) - len(todo)} already finished, in "
              f"{time.perf_counter() - start:.1f} s; {summary['finished']}/{summary['total']} cases in "
              f"{args.output / 'predictions.json'}; most uncertain: "
              f"{', '.join(summary['ranked_by_uncertainty'][:3])}")
    return 0
