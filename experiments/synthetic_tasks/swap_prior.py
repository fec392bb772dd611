"""A SegICL model with its CrossConv example prior replaced by another trained network, no retraining: does a better
prior carry through to SegICL? Writes a float32 model folder; `segicl export` it before comparing with shipped weights.

    python experiments/synthetic_tasks/swap_prior.py runs/crossconv-cool/model runs/segicl-swapped-raw
    segicl export runs/segicl-swapped-raw runs/segicl-swapped
"""
import argparse
from pathlib import Path

from segicl.incontext import CrossConvNet
from segicl.model import SegICLModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crossconv", type=Path, help="the trained CrossConv folder to become the prior")
    parser.add_argument("out", type=Path, help="the new SegICL model folder")
    parser.add_argument("--segicl", type=Path, default=Path("weights/segicl-tiny"), help="the model whose prior goes")
    args = parser.parse_args()
    model = SegICLModel.from_pretrained(args.segicl)
    model.use_crossconv_prior(CrossConvNet.from_pretrained(args.crossconv))
    model.save_pretrained(args.out)
    print(f"{args.segicl} with the prior {args.crossconv} -> {args.out}")


if __name__ == "__main__":
    main()
