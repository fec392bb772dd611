"""Model folders on disk: which engine's model a folder holds, and how reports name a folder.

Each engine saves `<folder>/model.safetensors` beside its own config file; the config file names live here, once, so
that either engine's loader (and the commands) can say when a folder holds the other engine's model.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


@contextlib.contextmanager
def reading_config(path: Path) -> Iterator[None]:
    """Around reading a model's config file and building the model from it: a file that is not JSON, or whose values
    build no model (a wrong type, a missing or unknown field), is one ValueError naming the file."""
    from segicl_data.imageio import one_line

    try:
        yield
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"{path}: not a usable model config ({type(error).__name__}: {one_line(error)})") from None


def load_weights(model, path: Path):
    """Load the safetensors file `path` into `model` (a torch module) without strictness: returns torch's result, its
    missing and unexpected names, for the caller to judge. Refused naming the file: no such file, a file that is not
    safetensors (a truncated copy, or a pickle saved under the name: nothing is ever unpickled), a tensor holding
    NaN/inf, a tensor whose shape does not fit the model."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from segicl_data.imageio import one_line

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: the model folder holds no weights")
    try:
        state = load_file(path)
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file ({one_line(error)}): a truncated copy, or "
                         "another format saved under its name (a pickle is never loaded)") from None
    poisoned = [name for name, tensor in state.items()
                if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if poisoned:
        raise ValueError(f"{path}: tensor {poisoned[0]} holds NaN/inf values ({len(poisoned)} such tensor(s))")
    try:
        return model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # torch's size mismatches
        raise ValueError(f"{path} does not fit the model: {one_line(error)}") from None


def shown_path(path: Path | str) -> str:
    """A path as reports and JSON name it: relative to the repository when inside it (the shipped weights are
    `weights/segicl-tiny` on every machine), otherwise as the user gave it."""
    try:
        return str(Path(path).resolve().relative_to(REPOSITORY))
    except ValueError:
        return str(path)
