"""Does tuning SegICL's example prior (the CrossConv network) on the episode's own examples help? Inference-time
training, no new data.

SegICL's condition follows its example prior closely (the prior's mask becomes condition tokens, and the prior alone
answers when it predicts the examples better than the LLM does). Per episode, the prior is trained for `--steps`
AdamW steps on the examples themselves: each example in turn is the query and the others its examples (k = 3 gives
3 leave-one-out tasks), each drawn under the training's independent random affines, with the training's Dice + CE
loss; then the episode is answered through `SegICLPipeline.segment` (decoder 1 step x 3 samples) and the prior is
restored. Scored: SegICL and the prior alone, before and after tuning, on the demo's episodes (k = 3).

    OMP_NUM_THREADS=1 python experiments/test_time_tuning/tune_prior.py --rows demo_held_out demo_train --out runs/ttt/a.json
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from segicl.evaluation import overlap_scores
from segicl.training import CrossConvTraining
from segicl_benchmarks.ood import OODOptions, paired
from segicl_commands.demo import demo_episode_config
from segicl_data.build import DatasetConfig
from segicl_data.dataset import SliceDataset
from segicl_data.episodes import EpisodeSampler
from segicl_data.transforms import SpatialTransformConfig, random_affine

DEMO_ROWS = {"demo_train": "train", "demo_held_out": "held_out"}


def leave_one_out_batch(images: np.ndarray, masks: np.ndarray, draws: int, seed: int) -> dict[str, torch.Tensor]:
    """`draws` x k tasks from k examples [k, H, W]: example i is the query, the others its examples, every image
    under its own random affine (the training's)."""
    config, rows, count = SpatialTransformConfig(), [], len(images)
    for draw in range(draws):
        for query in range(count):
            moved = []
            for index in [query] + [i for i in range(count) if i != query]:
                (image,), (mask,) = random_affine(config, [images[index]], [masks[index].astype(np.uint8)],
                                                  seed=seed + 1000 * draw + 10 * query + index)
                moved.append((image, mask.astype(np.float32)))
            rows.append(moved)
    stack = lambda part, which: torch.from_numpy(np.stack([[pair[which] for pair in row[part]] for row in rows]))  # noqa: E731
    return {"query_image": stack(slice(0, 1), 0), "query_mask": stack(slice(0, 1), 1),
            "example_images": stack(slice(1, None), 0)[:, :, None], "example_masks": stack(slice(1, None), 1)[:, :, None],
            "example_valid": torch.ones(len(rows), count - 1, dtype=torch.bool)}


def tune(network, images: np.ndarray, masks: np.ndarray, steps: int, learning_rate: float, draws: int,
         seed: int) -> None:
    """`steps` AdamW steps of the training loss on leave-one-out tasks of the examples (a new draw each step)."""
    stage = CrossConvTraining(network).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=0.0)
    for step in range(steps):
        batch = leave_one_out_batch(images, masks, draws, seed + step)
        loss = stage(**{key: batch[key] for key in ("example_images", "example_masks", "example_valid",
                                                     "query_image")}, query_mask=batch["query_mask"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()


def prior_dice(network, episode) -> dict:
    probability = network.probabilities(torch.from_numpy(episode.query_image)[None],
                                        torch.from_numpy(episode.example_images)[None],
                                        torch.from_numpy(episode.example_masks)[None],
                                        torch.ones(1, episode.k, dtype=torch.bool))[0, 0].numpy()
    return overlap_scores((probability > 0.5).astype(np.float32), episode.query_mask[0])


def score_row(pipeline, row: str, options: OODOptions, args) -> list[dict]:
    from segicl.volume import Settings

    settings = Settings(steps=options.steps, samples=options.samples, normalization="none", seed=options.seed)
    config = demo_episode_config(DEMO_ROWS[row], 3, options.min_area, options.seed)
    sampler = EpisodeSampler(SliceDataset.build(DatasetConfig()), config)
    network = pipeline.model.incontext
    shipped = copy.deepcopy(network.state_dict())
    records = []
    for index in tqdm(range(options.episodes), desc=row):
        episode = sampler[index]
        examples = [(image[0], mask[0]) for image, mask in zip(episode.example_images, episode.example_masks)]

        def answer() -> dict:
            pipeline._contexts.clear()  # the cached context holds the prior's verdict on these examples
            probability = pipeline.segment(episode.query_image[0], episode.instruction, examples,
                                           settings=settings).probabilities
            return overlap_scores((probability > 0.5).astype(np.float32), episode.query_mask[0])

        record = {"structure": episode.structure, "segicl": answer(), "prior": prior_dice(network, episode)}
        torch.manual_seed(index)
        tune(network, episode.example_images[:, 0], episode.example_masks[:, 0], args.steps, args.learning_rate,
             args.draws, seed=index * 100_000)
        record["segicl_tuned"], record["prior_tuned"] = answer(), prior_dice(network, episode)
        network.load_state_dict(shipped)
        records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("weights/segicl-tiny"))
    parser.add_argument("--rows", nargs="+", default=list(DEMO_ROWS))
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--draws", type=int, default=2, help="affine draws of the k leave-one-out tasks per step")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from segicl.pipeline import SegICLPipeline

    pipeline = SegICLPipeline.from_pretrained(args.model)
    options = OODOptions(episodes=args.episodes)
    result = {"settings": {"steps": args.steps, "learning_rate": args.learning_rate, "draws": args.draws}}
    for row in args.rows:
        records = result[row] = score_row(pipeline, row, options, args)
        for name in ("segicl", "prior"):
            versus = paired(records, f"{name}_tuned", name, seed=0)
            print(f"{row} {name}: {np.mean([r[name]['dice'] for r in records]):.3f} -> "
                  f"{np.mean([r[name + '_tuned']['dice'] for r in records]):.3f}  "
                  f"{versus['difference']:+.3f} {versus['ci95']}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
