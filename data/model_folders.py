"""Model folders on disk: which engine's model a folder holds, and how reports name a folder.

Each engine saves `<folder>/model.safetensors` beside its own config file; the config file names live here, once, so
that either engine's loader (and the commands) can say when a folder holds the other engine's model.
"""
from __future__ import annotations

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
WEIGHTS_NAME = "model.safetensors"
MODEL_CONFIGS = {"SegICL": "segicl_config.json", "MVG": "mvg_config.json", "CrossConv": "crossconv_config.json"}
ARTICLES = {"SegICL": "a SegICL", "MVG": "an MVG", "CrossConv": "a CrossConv"}


def check_model_folder(folder: Path, engine: str, flag: str | None = None) -> None:
    """Refuse a folder without `engine`'s saved model, saying when it holds the other engine's."""
    folder = Path(folder)
    if (folder / MODEL_CONFIGS[engine]).exists():
        return
    others = [name for name, config in MODEL_CONFIGS.items() if name != engine and (folder / config).exists()]
    held = f"; it holds {ARTICLES[others[0]]} model" if others else ""
    prefix = f"{flag}: " if flag else ""
    raise FileNotFoundError(f"{prefix}no {engine} model at {folder} ({MODEL_CONFIGS[engine]} missing){held}")


def shown_path(path: Path | str) -> str:
    """A path as reports and JSON name it: relative to the repository when inside it (the shipped weights are
    `weights/segicl-tiny` on every machine), otherwise as the user gave it."""
    try:
        return str(Path(path).resolve().relative_to(REPOSITORY))
    except ValueError:
        return str(path)
