"""The main job: dataset summary, stage-1 reconstruction, SegICL Dice for k = 0, 1, 3 on training and
held-out structures beside the copy-example baseline under the same transforms, overlays and a report."""
from __future__ import annotations

import json
import time
from pathlib import Path

from segicl_data.episodes import EpisodeConfig
from segicl_data.model_folders import MODEL_CONFIGS, shown_path
from segicl.evaluation import evaluate_episodes, evaluate_reconstruction, save_overlay

K_VALUES = (0, 1, 3)


def demo_episode_config(structures: str, k: int, min_area: int, seed: int) -> EpisodeConfig:
    """The demo's test episodes for one (structures, k) cell: the first k of the same max(K_VALUES) examples, so the
    k cells share their queries."""
    return EpisodeConfig(split="test", structures=structures, num_examples=k, max_examples=max(K_VALUES),
                         min_area=min_area, seed=seed)


def train_from_scratch(out_dir: Path, stage1_steps: int, stage2_steps: int, seed: int) -> Path:
    """Both stages, briefly (a smoke path that shows the whole pipeline without the shipped weights)."""
    from segicl_stages import stage1_decoder, stage2_encoder

    stage1_decoder.main(["--output-dir", str(out_dir / "stage1"), "--steps", str(stage1_steps), "--eval-masks", "32",
                         "--seed", str(seed), "--warmup-steps", str(max(stage1_steps // 20, 1))])
    stage2_encoder.main(["--init", str(out_dir / "stage1" / "model"), "--output-dir", str(out_dir / "stage2"),
                         "--steps", str(stage2_steps), "--seed", str(seed),
                         "--warmup-steps", str(max(stage2_steps // 20, 1))])
    return out_dir / "stage2" / "model"


def evaluate_all(model, dataset, episodes: int, min_area: int, num_steps: int, num_samples: int, seed: int,
                 overlay_dir: Path) -> dict:
    """Dice per (structures, k) and the copy baseline, on the same test episodes; overlays for k = 3."""
    table: dict = {"dice": {}, "copy_baseline": {}, "union_baseline": {}, "seconds_per_episode": {}}
    for structures in ("train", "held_out"):
        key = f"{structures}_structures"
        table["dice"][key] = {}
        for k in K_VALUES:
            config = demo_episode_config(structures, k, min_area, seed)
            result = evaluate_episodes(model, dataset, config, episodes, num_steps, num_samples, seed=seed,
                                       keep=3 if k == 3 else 0)
            table["dice"][key][str(k)] = round(result["dice"], 4)
            table["seconds_per_episode"][f"{key}_k{k}"] = round(result["seconds_per_episode"], 3)
            if k == 1:
                table["copy_baseline"][key] = round(result["copy_baseline_dice"], 4)
            if k == 3:
                table["union_baseline"][key] = round(result["union_baseline_dice"], 4)
            for index, (episode, probability, std) in enumerate(result.get("examples", [])):
                save_overlay(overlay_dir / f"{key}_k{k}_{index}.png", episode, probability, std)
            baseline = (f"  (copy example {result['copy_baseline_dice']:.3f})" if k == 1 else
                        f"  (union of examples {result['union_baseline_dice']:.3f})" if k == 3 else "")
            print(f"  {key:22s} k={k}: Dice {result['dice']:.3f}{baseline}", flush=True)
    return table


def write_report(out_dir: Path, report: dict, summary: dict) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    dice = report["dice"]
    lines = [
        "# SegICL demo report", "",
        f"Model: `{report['model']}`. Test split: held-out volume(s) "
        f"{', '.join(n for n, v in summary['volumes'].items() if v['split'] == 'test')}; "
        f"{report['episodes_per_cell']} episodes per cell, structures of at least {report['min_area_px']} px "
        f"at {summary['resolution']} px, independent random affines on examples and query, "
        f"decoder {report['sampler']}.", "",
        f"Stage-1 reconstruction Dice (held-out masks, teacher tokens -> decoder): "
        f"**{report['stage1_reconstruction_dice']:.3f}**", "",
        "Episodes are nested: every k uses the same queries, and k = 1's example is k = 3's first.", "",
        "| structures | k = 0 | k = 1 | k = 3 | copy example (k = 1) | union of examples (k = 3) |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("train_structures", "held_out_structures"):
        row = dice[key]
        lines.append(f"| {key.replace('_', ' ')} | {row['0']:.3f} | {row['1']:.3f} | {row['3']:.3f} | "
                     f"{report['copy_baseline'][key]:.3f} | {report['union_baseline'][key]:.3f} |")
    lines += ["", f"Wall time: {report['wall_time_s']:.0f} s.", "", "Overlays (image, truth, prediction, uncertainty, "
              "examples): `overlays/`."]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def run_demo(dataset, model_dir: Path | None, out_dir: Path, episodes: int, min_area: int, num_steps: int,
             num_samples: int, seed: int, from_scratch: bool, stage1_steps: int, stage2_steps: int,
             start: float | None = None, reconstruction_masks: int = 64) -> dict:
    from segicl.model import SegICLModel

    start = start or time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if from_scratch:
        model_dir = train_from_scratch(out_dir / "from_scratch", stage1_steps, stage2_steps, seed)
    if model_dir is None or not (model_dir / MODEL_CONFIGS["SegICL"]).exists():
        raise FileNotFoundError(f"no trained model at {model_dir}: run `make train-demo`, or `segicl demo --from-scratch`")
    model = SegICLModel.from_pretrained(model_dir)
    reconstruction = evaluate_reconstruction(model, dataset, masks=reconstruction_masks, min_area=min_area,
                                             num_steps=num_steps)
    print(f"stage-1 reconstruction Dice (held-out masks): {reconstruction['reconstruction_dice']:.3f}", flush=True)
    table = evaluate_all(model, dataset, episodes, min_area, num_steps, num_samples, seed, out_dir / "overlays")
    report = {
        "stage1_reconstruction_dice": round(reconstruction["reconstruction_dice"], 4),
        "dice": table["dice"], "copy_baseline": table["copy_baseline"], "union_baseline": table["union_baseline"],
        "wall_time_s": round(time.perf_counter() - start, 1),
        "model": shown_path(model_dir), "episodes_per_cell": episodes, "min_area_px": min_area,
        "sampler": f"{model.config.decoder.scheduler} {num_steps} steps x {num_samples} samples",
        "seconds_per_episode": table["seconds_per_episode"], "from_scratch": from_scratch,
    }
    write_report(out_dir, report, dataset.summary())
    return report
