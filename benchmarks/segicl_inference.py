"""Per-slice inference cost of SegICL on a real 3-D volume at k = 3, with and without the example cache.

    python benchmarks/segicl_inference.py --model weights/segicl-tiny --out runs/bench/segicl_inference.json

Both settings run in one process on the same volume (Colin27, the held-out test subject) and the same
examples, so their ratio is meaningful on a noisy machine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from data.dataset import SliceDataset
    from segicl.pipeline import SegICLPipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("weights/segicl-tiny"))
    parser.add_argument("--structure", default="brain/brain", help="task key whose examples are used")
    parser.add_argument("--slices", type=int, default=64, help="slices of the volume to segment")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/segicl_inference.json"))
    args = parser.parse_args()

    dataset = SliceDataset.build(progress=False)
    pipeline = SegICLPipeline.from_pretrained(args.model)
    volume = np.asarray(dataset.images("colin27"))
    middle = len(volume) // 2
    query = volume[middle - args.slices // 2: middle + args.slices // 2]
    rows = [r for r in dataset.rows_by_task[args.structure] if dataset.rows[r]["split"] in ("train", "support")]
    examples = []
    for row in rows[:3]:
        slice_index = dataset.rows[row]["slices"][len(dataset.rows[row]["slices"]) // 2]
        examples.append((dataset.image(dataset.rows[row]["volume"], slice_index), dataset.mask(row, slice_index)))
    name = dataset.rows[rows[0]]["name"]
    results = {}
    for label, use_cache in (("cached", True), ("uncached", False)):
        output = pipeline(query, f"Segment the {name} in this T1-weighted MRI slice.", examples,
                          num_samples=args.samples, num_steps=args.steps, batch_size=args.batch_size,
                          use_cache=use_cache, normalization="none")
        timings = output.timings
        per_slice = {key.replace("_s", "_ms_per_slice"): round(1000 * timings[key] / timings["slices"], 2)
                     for key in ("vision_s", "llm_s", "decoder_s")}
        results[label] = {**per_slice, "slices": timings["slices"], "k": len(examples),
                          "volume_s": round(sum(timings[k] for k in ("vision_s", "llm_s", "decoder_s")), 2)}
    results["llm_speedup_from_cache"] = round(results["uncached"]["llm_ms_per_slice"]
                                              / results["cached"]["llm_ms_per_slice"], 2)
    results["settings"] = {"samples": args.samples, "steps": args.steps, "batch_size": args.batch_size,
                           "model": str(args.model)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
