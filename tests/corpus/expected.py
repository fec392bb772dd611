"""What each entry point must do with each input of the corpus (tests/corpus/make_corpus.py).

Every case is an entry point, the problem of its input, how the entry point is run on it, and the outcome it must
give: a refusal (exit status 2 and one line on stderr that names the problem, matched by `refused`, a regex), or a
result (exit status 0), which `check` proves correct. A refusal may have a `check` too: what must not have happened.
A case with a `bug` is a known fault in a file this corpus may not change; it runs, and is expected to fail until
the bug is fixed (the reason says where).

The command-line cases run `segicl` in-process (`segicl_commands.cli.main`); the Python API cases
(`from_pretrained`) and the web app's uploads (`store_upload`, `open_image`) are run as the command line runs a
command: their refusal, a ValueError or FileNotFoundError, is printed as one line with status 2, anything else
escapes as a traceback. Paths are written {name} for a corpus input, {out} for the case's own output folder, and
{read_only} / {full_disk} for a read-only folder and a full file system (tests/reliability/conftest.py).
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.corpus.make_corpus import EXAMPLES, UNPICKLED, Corpus, left_handed

ENTRY_POINTS = ("segment", "predict", "data import", "evaluate", "mvg", "serve upload", "from_pretrained")
EXAMPLE, EXAMPLE_MASK = str(EXAMPLES / "mni152_thalamus_slice.png"), str(EXAMPLES / "mni152_thalamus_mask.png")
TEXT = "Segment the thalamus"
# The fastest settings the other tests use: one sampler step, one sample, no check of the examples.
FAST = ("--samples", "1", "--steps", "1", "--no-check-examples")
PLACE = re.compile(r"\{([^{}]+)\}")
# What a case can come to: the two outcomes an input may have, and the faults the corpus looks for.
REFUSED_AS_EXPECTED, CORRECT_RESULT = "refused as expected", "correct result"
TRACEBACK, SILENT_WRONG_OUTPUT, HALF_WRITTEN_FILE = "traceback", "silent wrong output", "half-written file"
WRONG_REFUSAL = "refusal not as expected"


@dataclass
class Places:
    """Where a case's paths lead: the corpus inputs, its output folder, the special folders it asked for; an upload
    slot of the web app beside the output folder (it holds the uploaded input, not an output)."""

    corpus: Corpus
    out: Path
    folders: dict[str, Path]

    @property
    def upload_slot(self) -> Path:
        return self.out.with_name("upload")

    def path(self, name: str) -> Path:
        if name == "out":
            return self.out
        return self.folders[name] if name in self.folders else self.corpus[name]

    def resolve(self, text: str) -> str:
        """`text` with every {name} replaced by its path; "{out}/mask.nii.gz" -> "/tmp/.../out/mask.nii.gz"."""
        return PLACE.sub(lambda match: str(self.path(match.group(1))), text)


@dataclass(frozen=True)
class Case:
    """One input through one entry point (`ENTRY_POINTS`): `run` gives the exit status; `refused` is the regex of the
    one-line refusal expected (None: a result is), `check` what proves the result right (or what a refusal must not
    have done), `bug` a known fault ("BUG: file ..."), `needs` the special folders it writes into."""

    entry: str
    problem: str
    run: Callable[[Places], int]
    refused: str | None = None
    check: Callable[[Places], None] | None = None
    bug: str | None = None
    needs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.entry} {self.problem}".lower()).strip("-")

    @property
    def expected(self) -> str:
        return REFUSED_AS_EXPECTED if self.refused is not None else CORRECT_RESULT


# ------------------------------------------------------------------------------------------- how to run
def cli(*argv: str) -> Callable[[Places], int]:
    """`segicl ARGV` in-process; its exit status."""
    from segicl_commands.cli import main

    return lambda places: main([places.resolve(word) for word in argv])


def segment(image: str, *flags: str, example: tuple[str, str] = (EXAMPLE, EXAMPLE_MASK),
            out: str = "{out}/mask.nii.gz") -> Callable[[Places], int]:
    return cli("segment", "--image", image, "--text", TEXT, "--example", *example, "--out", out, *FAST, *flags)


def predict(folder: str, output: str = "{out}/predictions") -> Callable[[Places], int]:
    return cli("predict", "-i", folder, "-o", output, "--text", TEXT, "--example", EXAMPLE, EXAMPLE_MASK, *FAST)


def import_(dataset: str, out: str = "{out}/import") -> Callable[[Places], int]:
    return cli("data", "import", dataset, "--out", out)


def evaluate(pred: str, truth: str = "{truth}", *flags: str, out: str = "{out}/scores") -> Callable[[Places], int]:
    return cli("evaluate", "--pred", pred, "--truth", truth, "--out", out, *flags)


def mvg(image: str, *flags: str, target: str = EXAMPLE_MASK, out: str = "{out}/output.nii.gz"):
    return cli("mvg", "--task", "segmentation", "--prompt-image", EXAMPLE, "--prompt-target", target, "--image", image,
               "--out", out, *flags)


def as_command(call: Callable[[Places], object], program: str) -> Callable[[Places], int]:
    """A Python API call run as the command line runs a command (`segicl_commands.arguments.exit_code`)."""
    from segicl_commands.arguments import exit_code

    def run(places: Places) -> int:
        call(places)
        return 0

    return lambda places: exit_code(lambda: run(places), program)


def from_pretrained(engine: str, folder: str) -> Callable[[Places], int]:
    def load(places: Places):
        from mvg_head.pipeline import MVGPipeline
        from segicl.pipeline import SegICLPipeline

        return {"SegICL": SegICLPipeline, "MVG": MVGPipeline}[engine].from_pretrained(places.resolve(folder))

    return as_command(load, f"{engine}Pipeline.from_pretrained")


def upload(source: str, name: str | None = None, **limits: int) -> Callable[[Places], int]:
    """The web app receiving `source` as an upload called `name` (its own name by default) into a slot:
    `store_upload` then `open_image`, with the page's refusal as one line (`readable`)."""
    def run(places: Places) -> int:
        from segicl_commands.webapp import Limits, open_image, readable, store_upload

        path, limit = places.path(source), Limits(**limits)
        try:
            open_image(store_upload(places.upload_slot, name or path.name, path.read_bytes(), limit), limit)
        except (ValueError, FileNotFoundError) as error:
            print(f"segicl serve: {readable(error)}", file=sys.stderr)
            return 2
        return 0

    return run


# ------------------------------------------------------------------------------------- what a result is
def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def same_voxels(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return array, affine


def on_the_grid(output: Path, source: Path) -> np.ndarray:
    """The output's voxels, once it is shown to lie on the source's grid (its shape and affine)."""
    written, affine = load(output)
    source_array, source_affine = load(source)
    assert written.shape == source_array.shape[: written.ndim], (written.shape, source_array.shape)
    np.testing.assert_allclose(affine, source_affine, atol=1e-5, err_msg="the output left the input's grid")
    return written


def on_the_grid_of(output: str, source: str, plain: Callable[[Places], int], plain_output: str,
                   store=same_voxels) -> Callable[[Places], None]:
    """The output lies on the source's grid and holds what the same run gives for the plain input (`plain`, writing
    `plain_output`), stored as the source stores its voxels (`store`)."""
    def check(places: Places) -> None:
        assert plain(places) == 0, "the plain input was not segmented"
        written = on_the_grid(Path(places.resolve(output)), places.path(source))
        expected, _ = store(*load(Path(places.resolve(plain_output))))
        np.testing.assert_array_equal(written, expected, err_msg="not the plain input's answer")

    return check


def segments_as_the_plain_volume(variant: str, store=same_voxels, out: str = "{out}/mask.nii.gz"):
    return on_the_grid_of(out, variant, segment("{volume.nii.gz}", out="{out}/plain/mask.nii.gz"),
                          "{out}/plain/mask.nii.gz", store)


def mvg_as_the_plain_volume(variant: str, store=same_voxels, out: str = "{out}/output.nii.gz"):
    return on_the_grid_of(out, variant, mvg("{volume.nii.gz}", out="{out}/plain/output.nii.gz"),
                          "{out}/plain/output.nii.gz", store)


def imports_as_the_plain_dataset(places: Places) -> None:
    """The import holds the same slices and label slices as the plain dataset's."""
    assert import_("{dataset}", out="{out}/plain")(places) == 0
    plain, imported = places.out / "plain", places.out / "import"
    arrays = sorted(path.relative_to(plain) for path in plain.rglob("*.npy"))
    assert arrays and arrays == sorted(path.relative_to(imported) for path in imported.rglob("*.npy"))
    for name in arrays:
        np.testing.assert_array_equal(np.load(imported / name), np.load(plain / name), err_msg=str(name))


def scores_as_the_plain_pair(places: Places) -> None:
    """The same Dice, IoU, HD95 and NSD as the plain prediction against the plain truth."""
    assert evaluate("{pred}", out="{out}/plain")(places) == 0
    plain = json.loads((places.out / "plain" / "summary.json").read_text())
    scored = json.loads((places.out / "scores" / "summary.json").read_text())
    assert scored["mean"] == plain["mean"] and plain["mean"]["1"]["dice"] < 1.0


def empty_label_map_on_the_grid_of(source: str) -> Callable[[Places], None]:
    def check(places: Places) -> None:
        assert not on_the_grid(places.out / "output.nii.gz", places.path(source)).any(), "labels in a blank image"

    return check


def predicted_as_segment_does(places: Places) -> None:
    """predict's mask of the case (a copy of the volume) is segment's mask of the volume, listed in
    predictions.json."""
    segments_as_the_plain_volume("volume.nii.gz", out="{out}/predictions/scän 1.nii.gz")(places)
    assert json.loads((places.out / "predictions" / "predictions.json").read_text())["finished"] == 1


def stored_under_a_safe_name(places: Places) -> None:
    """The upload lands in its slot under its base name made safe, and reads as the volume it is."""
    (stored,) = places.upload_slot.iterdir()
    assert re.fullmatch(r"[A-Za-z0-9._-]+", stored.name), stored.name
    np.testing.assert_array_equal(load(stored)[0], load(places.path("volume.nii.gz"))[0])


def nothing_unpickled(places: Places) -> None:
    assert not (places.corpus.root / UNPICKLED).exists(), "a pickle was loaded"


# ------------------------------------------------------------------------------------------------ cases
CANNOT_WRITE = r"Cannot write .*: (Read-only file system|Permission denied)"
NOT_SEGMENTABLE_IMAGES = {
    "truncated NIfTI (.nii.gz cut in half)": ("{truncated.nii.gz}", r"Could not read NIfTI file .*truncated\.nii\.gz: "
                                                                    r"EOFError"),
    "truncated NIfTI (.nii cut in half)": ("{truncated.nii}", r"truncated\.nii: the header declares shape "
                                                              r"\(64, 64, 4\) .* more than the file can hold"),
    "corrupt NIfTI (random bytes)": ("{corrupt.nii.gz}", r"Could not read NIfTI file .*corrupt\.nii\.gz"),
    "empty file": ("{empty.nii.gz}", r"Could not read NIfTI file .*empty\.nii\.gz"),
    "NIfTI header claiming 10^12 voxels (.nii.gz)": ("{huge_header.nii.gz}", r"declares shape \(10000, 10000, 10000\) "
                                                     r"= 1,000,000,000,000 voxels"),
    "NIfTI header claiming 10^12 voxels (.nii)": ("{huge_header.nii}", r"1,000,000,000,000 voxels .* more than the "
                                                                       r"file can hold"),
    "NaN voxels": ("{nan.nii.gz}", r"nan\.nii\.gz: 100 non-finite voxels \(NaN/inf\)"),
    "infinite voxels": ("{inf.nii.gz}", r"inf\.nii\.gz: 100 non-finite voxels \(NaN/inf\)"),
    "constant image": ("{constant.nii.gz}", r"constant\.nii\.gz is constant \(all 16,384 voxel\(s\) are 7\)"),
    "4-D image": ("{four_d.nii.gz}", r"four_d\.nii\.gz: expected a 2-D image or a 3-D volume, got shape "
                                     r"\(64, 64, 4, 2\)"),
    "affine with a zero column": ("{zero_column_affine.nii}", r"zero_column_affine\.nii: the affine gives voxel "
                                                              r"axis 0 no direction in space"),
    "affine with NaN": ("{nan_affine.nii}", r"nan_affine\.nii: the affine holds NaN/inf values"),
    "1-voxel NIfTI": ("{one_voxel.nii.gz}", r"one_voxel\.nii\.gz is constant \(all 1 voxel\(s\) are 1\)"),
    "1-pixel PNG": ("{one_pixel.png}", r"one_pixel\.png is constant \(all 1 voxel\(s\) are 100\)"),
    "truncated PNG": ("{truncated.png}", r"Could not read image file .*truncated\.png: OSError: image file is "
                                         r"truncated"),
    "truncated DICOM": ("{truncated.dcm}", r"Could not read DICOM file .*truncated\.dcm"),
    "corrupt DICOM": ("{corrupt.dcm}", r"Could not read DICOM file .*corrupt\.dcm"),
    "DICOM series with a truncated slice file": ("{series_gap}", r"series_gap: the slices of the series are not "
                                                                 r"evenly spaced .* a slice file is missing"),
    "unsupported format (.nrrd)": ("{volume.nrrd}", r"unsupported ending '\.nrrd'"),
    "pickle disguised as .npy": ("{pickle.npy}", r"Could not read NPY file .*pickle\.npy: .*allow_pickle=False"),
    "dangling symbolic link": ("{dangling.nii.gz}", r"dangling\.nii\.gz \(a symbolic link to .*no such scan\.nii\.gz, "
                                                    r"which leads to no file\)"),
}
SEGMENT = [
    *(Case("segment", problem, segment(image), refused=pattern,
           check=nothing_unpickled if "pickle" in problem else None)
      for problem, (image, pattern) in NOT_SEGMENTABLE_IMAGES.items()),
    Case("segment", "missing file", segment("{out}/no scan here.nii.gz"), r"Image file not found: .*no scan here"),
    Case("segment", "RGB example mask", segment("{volume.nii.gz}", example=(EXAMPLE, "{rgb_mask.png}")),
         r"rgb_mask\.png: a colour image \(RGB\) cannot be segmented"),
    Case("segment", "example mask with three values", segment("{volume.nii.gz}",
                                                             example=(EXAMPLE, "{three_values_mask.png}")),
         r"three_values_mask\.png: an example mask must be binary .* found values \[0\.0, 1\.0, 2\.0\]"),
    Case("segment", "example mask of another size", segment("{volume.nii.gz}", example=(EXAMPLE, "{small_mask.png}")),
         r"differ in size once oriented for display: \(1, 64, 64\) vs \(1, 32, 32\)"),
    Case("segment", "example label value out of range",
         segment("{volume.nii.gz}", "--example-label", "9", example=("{volume.nii.gz}", "{labels.nii.gz}")),
         r"labels\.nii\.gz: no voxel has the label value 9; values present \[0, 1, 2\]"),
    Case("segment", "example label map of another spacing",
         segment("{volume.nii.gz}", "--example-label", "1",
                 example=("{volume.nii.gz}", "{labels_other_spacing.nii.gz}")),
         r"labels_other_spacing\.nii\.gz.*(geometry|affine|spacing)"),
    Case("segment", "example label map stored left-handed",
         segment("{volume.nii.gz}", "--example-label", "1", example=("{volume.nii.gz}", "{labels_left_handed.nii.gz}")),
         check=on_the_grid_of("{out}/mask.nii.gz", "volume.nii.gz",
                              segment("{volume.nii.gz}", "--example-label", "1", out="{out}/plain/mask.nii.gz",
                                      example=("{volume.nii.gz}", "{labels.nii.gz}")), "{out}/plain/mask.nii.gz")),
    Case("segment", "oblique affine", segment("{oblique.nii.gz}"),
         check=segments_as_the_plain_volume("oblique.nii.gz")),
    Case("segment", "left-handed affine", segment("{left_handed.nii.gz}"),
         check=segments_as_the_plain_volume("left_handed.nii.gz", left_handed)),
    Case("segment", "unicode and spaces in the paths",
         segment("{unicode.nii.gz}", out="{out}/masks ø/mask 1 ß.nii.gz"),
         check=segments_as_the_plain_volume("unicode.nii.gz", out="{out}/masks ø/mask 1 ß.nii.gz")),
    Case("segment", "read-only output folder", segment("{volume.nii.gz}", out="{read_only}/mask.nii.gz"),
         CANNOT_WRITE, needs=("read_only",)),
    Case("segment", "full disk", segment("{volume.nii.gz}", out="{full_disk}/mask.nii.gz"),
         r"Cannot write .*mask\.nii\.gz: No space left on device", needs=("full_disk",)),
    Case("segment", "output path under a file", segment("{volume.nii.gz}", out="{volume.nii.gz}/mask.nii.gz"),
         r"Cannot write .*volume\.nii\.gz/mask\.nii\.gz: (File exists|Not a directory)"),
    Case("segment", "tampered model (a tensor of the wrong shape)",
         segment("{volume.nii.gz}", "--model", "{segicl_wrong_shape}"),
         r"segicl_wrong_shape/model\.safetensors does not fit the model: .*size mismatch"),
]

PREDICT = [
    Case("predict", "a truncated case among good ones", predict("{cases_one_truncated}"),
         r"Could not read NIfTI file .*b_0000\.nii\.gz: EOFError"),
    Case("predict", "a folder without images", predict("{cases_without_images}"),
         r"no cases in .*cases_without_images"),
    Case("predict", "a case with NaN voxels", predict("{cases_nan}"), r"a_0000\.nii\.gz: 100 non-finite voxels"),
    Case("predict", "a constant case", predict("{cases_constant}"), r"constant"),
    Case("predict", "two inputs of one case", predict("{cases_two_inputs}"), r"two inputs for case 'a'"),
    Case("predict", "an nnU-Net case without channel 0000", predict("{cases_without_0000}"),
         r"case 'a' .* has channels \['0001'\] but no _0000"),
    Case("predict", "unicode and spaces in the paths", predict("{cases ü unicode}"), check=predicted_as_segment_does),
    Case("predict", "read-only output folder", predict("{cases ü unicode}", output="{read_only}/predictions"),
         CANNOT_WRITE + r"|Read-only file system", needs=("read_only",)),
]

BROKEN_DATASETS = {
    "numTraining as a string":
        ("{dataset_numtraining_string}", r"'numTraining' must be an integer, got \"3\""),
    "channel_names as a list":
        ("{dataset_channels_list}", r"'channel_names' must be an object, got \[\"T1\"\]"),
    "a channel name null":
        ("{dataset_channel_null}", r"channel names must be non-empty strings, got \[None\]"),
    "the dataset key as a list": ("{dataset_manifest_list}", r"'dataset' must be an object"),
    "the name as an object": ("{dataset_name_object}", r"'name' must be a string"),
    "a label value as text":
        ("{dataset_label_as_text}", r"label 'thalamus' has value '1'; expected a non-negative integer"),
    "dataset.json not JSON": ("{dataset_not_json}", r"dataset\.json is not valid JSON"),
    "MSD training not a list": ("{msd_training_not_list}", r"'training' must be an array, got 3"),
    "a label map of another size":
        ("{dataset_label_other_size}", r"case1\.nii\.gz: label shape \(64, 60, 4\) differs from the image's "
                                       r"\(64, 64, 4\)"),
    "a label map of another spacing":
        ("{dataset_label_other_spacing}", r"case1\.nii\.gz: label affine differs from the image's"),
    "label values out of range":
        ("{dataset_label_out_of_range}", r"case1\.nii\.gz: label value\(s\) \[7\] are not declared"),
    "a label value above 16 bits":
        ("{dataset_label_above_16_bits}", r"dataset\.json: label value\(s\) \[70000\] above 65535"),
    "negative label values":
        ("{dataset_label_negative}", r"case1\.nii\.gz: label values must be non-negative integers, found \[-1, 0\]"),
    "NaN voxels in an image": ("{dataset_nan_image}", r"case1_0000\.nii\.gz: 100 non-finite voxels"),
    "a constant image": ("{dataset_constant_image}", r"case1_0000\.nii\.gz: the image is constant"),
    "a truncated image":
        ("{dataset_truncated_image}", r"case1_0000\.nii\.gz: unreadable image \(Could not read NIfTI"),
    "an image header claiming 10^12 voxels":
        ("{dataset_huge_header}", r"case1_0000\.nii\.gz: unreadable image .* 1,000,000,000,000 voxels"),
    "a dangling symbolic link":
        ("{dataset_dangling_symlink}", r"case1_0000\.nii\.gz \(a symbolic link to .*moved away\.nii\.gz, which "
                                       r"leads to no file\)"),
    "a symbolic link loop":
        ("{dataset_symlink_loop}", r"case1_0000\.nii\.gz \(a symbolic link to .*case1_0000\.nii\.gz, which leads "
                                   r"to no file\)"),
    "a symbolic link out of the dataset to a text file":
        ("{dataset_symlink_to_text}", r"case1\.nii\.gz: unreadable label map .*not a gzip file"),
}
DATA_IMPORT = [
    *(Case("data import", problem, import_(dataset), refused=pattern)
      for problem, (dataset, pattern) in BROKEN_DATASETS.items()),
    Case("data import", "a symbolic link out of the dataset to a case", import_("{dataset_symlink_outside}"),
         check=imports_as_the_plain_dataset),
    Case("data import", "oblique affines", import_("{dataset_oblique}"), check=imports_as_the_plain_dataset),
    Case("data import", "left-handed affines", import_("{dataset_left_handed}"), check=imports_as_the_plain_dataset),
    Case("data import", "unicode and spaces in the paths", import_("{dataset ünicode spaces}"),
         check=imports_as_the_plain_dataset),
    Case("data import", "read-only output folder", import_("{dataset}", out="{read_only}/import"), CANNOT_WRITE,
         needs=("read_only",)),
]

BROKEN_PREDICTIONS = {
    "a prediction of another spacing": ("{pred_other_spacing}", r"affine mismatch: the spacing \(mm\) of prediction "
                                                                r".*is \[2\.0, 2\.0, 2\.0\]"),
    "a prediction of another size": ("{pred_other_size}", r"shape mismatch: prediction .* has shape \(60, 64, 4\)"),
    "probabilities instead of labels": ("{pred_probabilities}", r"not a label map: non-integer values, "
                                                                r"e\.g\. (0\.7|1\.4)"),
    "negative label values": ("{pred_negative}", r"not a label map: negative label value -2"),
    "a 4-D prediction": ("{pred_four_d}", r"case\.nii\.gz: a label map must be 2-D or 3-D without channels, "
                                          r"got shape \(64, 64, 4, 2\)"),
    "a truncated prediction": ("{pred_truncated}", r"Could not read NIfTI file .*pred_truncated/case\.nii\.gz"),
    "a header claiming 10^12 voxels": ("{pred_huge_header}", r"1,000,000,000,000 voxels"),
}
EVALUATE = [
    *(Case("evaluate", problem, evaluate(pred), refused=pattern)
      for problem, (pred, pattern) in BROKEN_PREDICTIONS.items()),
    Case("evaluate", "label value out of range for the label table",
         evaluate("{pred}", "{truth}", "--labels", "{labels_thalamus_only.json}"),
         r"label value 2 is not declared in the label table"),
    Case("evaluate", "a label table of the wrong types", evaluate("{pred}", "{truth}", "--labels",
                                                                  "{labels_wrong_types.json}"),
         r"labels_wrong_types\.json: 'labels' must map names to values"),
    Case("evaluate", "a missing truth folder", evaluate("{pred}", "{out}/no truth"), r"folder not found: .*no truth"),
    Case("evaluate", "read-only output folder", evaluate("{pred}", out="{read_only}/scores"), CANNOT_WRITE,
         needs=("read_only",)),
    Case("evaluate", "unicode and spaces in the paths", evaluate("{pred ünicode}", "{truth ünicode}"),
         check=scores_as_the_plain_pair),
    Case("evaluate", "left-handed affines", evaluate("{pred_left_handed}", "{truth_left_handed}"),
         check=scores_as_the_plain_pair),
]

MVG = [
    Case("mvg", "truncated query", mvg("{truncated.nii.gz}"), r"Could not read NIfTI file .*truncated\.nii\.gz"),
    Case("mvg", "NaN voxels in the query", mvg("{nan.nii.gz}"), r"nan\.nii\.gz: 100 non-finite voxels"),
    Case("mvg", "4-D query", mvg("{four_d.nii.gz}"),
         r"expected a 2-D image or a 3-D volume, got shape \(64, 64, 4, 2\)"),
    Case("mvg", "RGB prompt label map", mvg("{volume.nii.gz}", target="{rgb_mask.png}"),
         r"rgb_mask\.png: a colour image \(RGB\) cannot be segmented"),
    Case("mvg", "1-pixel query", mvg("{one_pixel.png}", out="{out}/output.png"),
         r"prompt/query size mismatch: prompt slices are \(64, 64\), query slices \(1, 1\)"),
    Case("mvg", "read-only output folder", mvg("{volume.nii.gz}", out="{read_only}/output.nii.gz"), CANNOT_WRITE,
         needs=("read_only",)),
    Case("mvg", "a SegICL model folder as the MVG model", mvg("{volume.nii.gz}", "--model", "{segicl_missing_tensor}"),
         r"no MVG model at .*segicl_missing_tensor \(mvg_config\.json missing\); it holds a SegICL model"),
    Case("mvg", "tampered model (NaN weights)", mvg("{volume.nii.gz}", "--model", "{mvg_nan_tensor}"),
         r"mvg_nan_tensor/model\.safetensors: tensor .* holds NaN/inf values"),
    Case("mvg", "constant query", mvg("{constant.nii.gz}"), check=empty_label_map_on_the_grid_of("constant.nii.gz")),
    Case("mvg", "left-handed affine", mvg("{left_handed.nii.gz}"),
         check=mvg_as_the_plain_volume("left_handed.nii.gz", left_handed)),
    Case("mvg", "unicode and spaces in the paths", mvg("{unicode.nii.gz}", out="{out}/sorties é/out 1.nii.gz"),
         check=mvg_as_the_plain_volume("unicode.nii.gz", out="{out}/sorties é/out 1.nii.gz")),
]

SERVE = [
    Case("serve upload", "truncated NIfTI", upload("truncated.nii.gz"),
         r"Could not read NIfTI file .*truncated\.nii\.gz: EOFError"),
    Case("serve upload", "NIfTI header claiming 10^12 voxels", upload("huge_header.nii.gz"),
         r"huge_header\.nii\.gz has 1,000,000,000,000 voxels, more than this server's limit"),
    Case("serve upload", "corrupt zip", upload("corrupt.zip"), r"corrupt\.zip is not a readable zip archive"),
    Case("serve upload", "zip escaping its folder", upload("escaping.zip"),
         r"escaping\.zip: the zip holds a path outside its folder \(\.\./\.\./outside\.dcm\)"),
    Case("serve upload", "zip bomb", upload("bomb.zip", max_voxels=2**20), r"bomb\.zip unpacks to 16 MiB, more than"),
    Case("serve upload", "zip without DICOM", upload("no_dicom.zip"), r"No DICOM series found in directory"),
    Case("serve upload", "zipped DICOM series with a truncated slice file", upload("series_gap.zip"),
         r"the slices of the series are not evenly spaced"),
    Case("serve upload", "empty upload", upload("empty.nii.gz"), r"empty\.nii\.gz is empty \(0 bytes\)"),
    Case("serve upload", "unsupported format (.nrrd)", upload("volume.nrrd"),
         r"volume\.nrrd: not a file type this page reads"),
    Case("serve upload", "truncated PNG", upload("truncated.png"), r"Could not read image file .*truncated\.png"),
    Case("serve upload", "corrupt DICOM", upload("corrupt.dcm"), r"Could not read DICOM file .*corrupt\.dcm"),
    Case("serve upload", "upload over the size limit", upload("volume.nii.gz", upload_bytes=1024),
         r"volume\.nii\.gz is 0\.0 MiB, more than this server's upload limit of 0 MiB"),
    Case("serve upload", "unicode, spaces and a path in the name",
         upload("volume.nii.gz", "../ü dir/scän 1 é.nii.gz"),
         check=stored_under_a_safe_name),
]

BROKEN_MODELS = {
    "a missing tensor": ("missing_tensor", {"SegICL": r"lacks weights, e\.g\. \[", "MVG": r"missing \['"}),
    "a tensor of the wrong shape": ("wrong_shape", r"does not fit the model: .*size mismatch for"),
    "a tensor of NaN": ("nan_tensor", r"model\.safetensors: tensor .* holds NaN/inf values"),
    "an injected tensor": ("extra_tensor", r"unexpected.*injected\.weight"),
    "a pickle disguised as safetensors": ("pickle", r"model\.safetensors is not a readable safetensors file .*a "
                                                    r"pickle is never loaded"),
    "a truncated safetensors file": ("truncated", r"model\.safetensors is not a readable safetensors file"),
    "no weights file": ("no_weights", r"model\.safetensors not found: the model folder holds no weights"),
    "a config that is not JSON": ("config_not_json", r"_config\.json: not a usable model config \(JSONDecodeError"),
    "a config of the wrong types": ("config_wrong_types", r"_config\.json: not a usable model config \(TypeError"),
}


def broken_model_cases(engine: str) -> list[Case]:
    cases = []
    for problem, (folder, pattern) in BROKEN_MODELS.items():
        pattern = pattern[engine] if isinstance(pattern, dict) else pattern
        cases.append(Case("from_pretrained", f"{engine} {problem}",
                          from_pretrained(engine, f"{{{engine.lower()}_{folder}}}"), refused=pattern,
                          check=nothing_unpickled if folder == "pickle" else None))
    return cases


FROM_PRETRAINED = [
    *broken_model_cases("SegICL"),
    *broken_model_cases("MVG"),
    Case("from_pretrained", "SegICL without its tokenizer", from_pretrained("SegICL", "{segicl_no_tokenizer}"),
         r"no tokenizer\.json in .*segicl_no_tokenizer/tokenizer"),
    Case("from_pretrained", "MVG given a SegICL folder", from_pretrained("MVG", "{segicl_extra_tensor}"),
         r"no MVG model at .* it holds a SegICL model"),
    Case("from_pretrained", "SegICL from a missing folder", from_pretrained("SegICL", "{out}/no model"),
         r"no SegICL model at .*no model"),
]

CASES: list[Case] = SEGMENT + PREDICT + DATA_IMPORT + EVALUATE + MVG + SERVE + FROM_PRETRAINED
