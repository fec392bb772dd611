"""The shipped tiny weights, installed with the package: one model folder each, made by the recipe of the same name
in `recipes/` (`segicl train --recipe`)."""
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
SEGICL_TINY = FOLDER / "segicl-tiny"
CROSSCONV_TINY = FOLDER / "crossconv-tiny"
MVG_TINY = FOLDER / "mvg-tiny"
