"""The cases of an input folder, as `segicl predict` reads them, and the output file each one gets.

A folder holds one case per image file (NIfTI, NPY, PNG/JPG, a single DICOM file) or per subfolder of DICOM files (a
series). nnU-Net v2 names a case's channels CASE_0000.nii.gz, CASE_0001.nii.gz, ...: such a case is CASE, read from
its channel 0000 (the models read one channel), and its prediction is CASE.nii.gz, as `nnUNetv2_predict` names it.
Predictions are NIfTI for NIfTI and DICOM inputs (DICOM is not written), and the input's own format otherwise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from segicl_data.imageio import SUPPORTED_READ_ENDINGS, ending_of

DICOM_ENDINGS = (".dcm", ".dicom")
NNUNET_CHANNEL = re.compile(r"(.+)_(\d{4})")


@dataclass(frozen=True)
class Case:
    """One input: its name, the file or DICOM series folder to read, and the ending its outputs take."""

    name: str
    path: Path
    output_ending: str

    def output(self, folder: Path, suffix: str = "") -> Path:
        """The output file in `folder`: CASE.nii.gz, or CASE_<suffix>.nii.gz for the extra maps."""
        return Path(folder) / f"{self.name}{'_' + suffix if suffix else ''}{self.output_ending}"


def _is_dicom_series(folder: Path) -> bool:
    return any(ending_of(path) in DICOM_ENDINGS for path in folder.iterdir() if path.is_file())


def _file_case(path: Path) -> tuple[str, str | None, str]:
    """(case name, nnU-Net channel or None, output ending) of an image file."""
    ending = ending_of(path)
    stem = path.name[: -len(ending)]
    match = NNUNET_CHANNEL.fullmatch(stem)
    output = ".nii.gz" if ending in (".nii", ".nii.gz", *DICOM_ENDINGS) else ending
    return (match.group(1), match.group(2), output) if match else (stem, None, output)


def list_input_cases(folder: str | Path) -> list[Case]:
    """The cases of `folder`, sorted by name. Refuses a missing folder, a folder without cases, two inputs of one case
    (a.nii and a.nii.gz), and an nnU-Net case without its channel 0000."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder not found: {folder}")
    found: dict[str, dict[str | None, Path]] = {}
    endings: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if _is_dicom_series(path):
                name, channel, ending = path.name, None, ".nii.gz"
            else:
                continue
        elif ending_of(path) in SUPPORTED_READ_ENDINGS:
            name, channel, ending = _file_case(path)
        else:
            continue
        if channel in found.setdefault(name, {}):
            raise ValueError(f"two inputs for case {name!r} in {folder}: {found[name][channel].name} and {path.name}")
        found[name][channel] = path
        endings[name] = ending
    if not found:
        raise ValueError(f"no cases in {folder}: image files ({', '.join(SUPPORTED_READ_ENDINGS)}) or DICOM series "
                         "folders expected")
    return [Case(name, _channel_zero(name, channels, folder), endings[name]) for name, channels in sorted(found.items())]


def _channel_zero(name: str, channels: dict[str | None, Path], folder: Path) -> Path:
    """The one file of a plain case, or channel 0000 of an nnU-Net case."""
    if None in channels and len(channels) > 1:
        raise ValueError(f"case {name!r} in {folder} is both a plain file ({channels[None].name}) and nnU-Net "
                         f"channels ({', '.join(sorted(c for c in channels if c))})")
    if None in channels:
        return channels[None]
    if "0000" not in channels:
        raise ValueError(f"case {name!r} in {folder} has channels {sorted(channels)} but no _0000: the model reads "
                         "channel 0000")
    return channels["0000"]


def shard(cases: list[Case], num_parts: int, part_id: int) -> list[Case]:
    """Part `part_id` of `num_parts` (every num_parts-th case from part_id: parts of equal size within one case)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")
    return cases[part_id::num_parts]
