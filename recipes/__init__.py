"""The training recipes of the shipped models, one TOML file each (`segicl train --recipe NAME`), and copies of the
repository's accelerate launch configs that they name, installed with the package so that a recipe runs outside a
checkout."""
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
