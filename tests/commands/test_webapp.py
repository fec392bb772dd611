"""The web app's callbacks (commands/webapp.py) without a browser: every input kind of the Segment tab, the example
bank, the labelling loop on a folder, the image tasks, progress and cancel, the pictures, and every refusal as one
readable line after which the next request works. A random tiny SegICL model where the figure does not matter; the
shipped MVG weights (small)."""
import importlib.util
import json
import re
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segicl_commands.cli import main
from segicl.volume import Settings
from segicl_commands.webapp import (AppState, Cancelled, FolderRequest, ImageTaskRequest, Job, Limits, SegmentRequest,
                                    add_to_bank, bank_cases, describe_case, folder_listing, instruction_for,
                                    open_case, open_image, overlay, preview_query, readable, render_image_task,
                                    render_segment, run_folder, run_image_task, run_segment, store_upload)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SLICE, SLICE_MASK = EXAMPLES / "colin27_thalamus_slice.png", EXAMPLES / "colin27_thalamus_mask.png"
EXAMPLE, EXAMPLE_MASK = EXAMPLES / "mni152_thalamus_slice.png", EXAMPLES / "mni152_thalamus_mask.png"
TEXT = instruction_for("thalamus")
QUICK = Settings(steps=1, samples=2)


@pytest.fixture(scope="module")
def state(tiny_model, tmp_path_factory):
    from mvg_head.pipeline import MVGPipeline
    from segicl.pipeline import SegICLPipeline

    return AppState(SegICLPipeline(tiny_model), MVGPipeline.from_pretrained(REPO / "weights" / "mvg-tiny"), Limits(),
                    tmp_path_factory.mktemp("workspace"))


def volume_file(folder: Path, shape=(20, 24, 9), name="volume.nii.gz") -> tuple[Path, np.ndarray]:
    """A NIfTI volume with a bright block (the 'structure') inside a dimmer head, and that block as a mask."""
    image = np.zeros(shape, np.float32)
    image[2:-2, 2:-2, 1:-1] = 100
    mask = np.zeros(shape, np.uint8)
    mask[6:12, 8:14, 3:6] = 1
    image[mask > 0] = 300
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), folder / name)
    nib.save(nib.Nifti1Image(mask, affine), folder / name.replace(".nii.gz", "_mask.nii.gz"))
    return folder / name, mask


def zipped_series(folder: Path) -> tuple[Path, tuple[int, ...]]:
    """A DICOM series of 4 slices (written as tests/data/test_imageio.py writes one), zipped inside a subfolder."""
    spec = importlib.util.spec_from_file_location("imageio_tests", REPO / "tests" / "data" / "test_imageio.py")
    imageio_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(imageio_tests)
    volume = np.full((4, 12, 10), -1000, np.int16)
    volume[:, 2:10, 2:8] = 40
    imageio_tests._write_series(folder / "series", volume, (1.0, 1.0, 2.5), (0.0, 0.0, 0.0))
    archive = folder / "series.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in sorted((folder / "series").iterdir()):
            handle.write(file, f"study/series/{file.name}")
    return archive, (10, 12, 4)


def request(default_query: Path, **fields) -> SegmentRequest:
    fields.setdefault("query", default_query)
    fields.setdefault("examples", [(EXAMPLE, EXAMPLE_MASK)])
    fields.setdefault("settings", QUICK)
    return SegmentRequest(instruction=fields.pop("instruction", TEXT), **fields)


# ------------------------------------------------------------------------------------------------ uploads
def test_an_upload_is_stored_under_its_base_name_in_its_slot_and_replaces_the_previous_one(tmp_path):
    first = store_upload(tmp_path / "query", "../../etc/scan.png", b"x", Limits())
    assert first == tmp_path / "query" / "scan.png" and first.read_bytes() == b"x"
    second = store_upload(tmp_path / "query", "C:\\Users\\me\\head scan.nii.gz", b"yy", Limits())
    assert second.name == "head_scan.nii.gz" and list((tmp_path / "query").iterdir()) == [second]


@pytest.mark.parametrize("name, data, limits, message", [
    ("scan.png", b"", Limits(), "scan.png is empty (0 bytes)"),
    ("notes.txt", b"hello", Limits(), "notes.txt: not a file type this page reads"),
    ("scan.png", b"x" * 3000, Limits(upload_bytes=2048), "more than this server's upload limit"),
])
def test_uploads_that_cannot_be_used_are_refused_before_anything_is_written(name, data, limits, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        store_upload(tmp_path / "slot", name, data, limits)
    assert not (tmp_path / "slot").exists()


def test_a_message_names_an_upload_by_its_file_name_not_the_servers_folders(state):
    path = state.workspace / "client1" / "query" / "scan.nii.gz"
    assert readable(ValueError(f"Cannot read {path}: broken\n header"), state.workspace) == \
        "Cannot read scan.nii.gz: broken header"


# ------------------------------------------------------------------------------------------ each input kind
def test_a_png_slice_gives_a_binary_png_mask_its_uncertainty_and_dice_against_the_truth(state, tmp_path):
    view = run_segment(state, request(SLICE, truth=SLICE_MASK), tmp_path)
    assert set(view.files) == {"mask", "uncertainty"}
    mask = np.asarray(Image.open(view.files["mask"]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert view.result.mask.shape == view.display.shape == (1, 64, 64) and 0 <= view.dice <= 1
    picture, spread, caption = render_segment(view, 0)
    assert picture.shape == spread.shape == (64, 64, 3) and picture.dtype == np.uint8
    assert f"Dice against the truth (green outline) {view.dice:.3f}" in caption and "spread of 2 samples" in caption
    mask = np.zeros((64, 64), np.uint8)
    mask[20:30, 20:30] = 1
    red = overlay(view.display[0], mask)  # without a truth outline: red exactly over the mask
    np.testing.assert_array_equal(red[..., 0] > red[..., 1], mask > 0)


def test_registered_examples_are_fused_in_and_the_caption_gives_the_models_share(state, tmp_path):
    from segicl.registered_examples import WEIGHTS

    settings = replace(QUICK, register_examples=True)
    view = run_segment(state, request(SLICE, examples=[(EXAMPLE, EXAMPLE_MASK), (SLICE, SLICE_MASK)],
                                      settings=settings), tmp_path)
    (report,) = view.result.structures.values()
    assert report["model_weight"] in WEIGHTS
    caption = render_segment(view, 0)[2]
    assert f"the model's share of the answer {report['model_weight']:.1f}" in caption
    plain = run_segment(state, request(SLICE, examples=[(EXAMPLE, EXAMPLE_MASK), (SLICE, SLICE_MASK)]), tmp_path / "p")
    assert "model_weight" not in next(iter(plain.result.structures.values()))
    assert "share" not in render_segment(plain, 0)[2]


def test_the_page_gives_the_mask_segicl_segment_writes_for_the_same_input(state, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    view = run_segment(state, request(SLICE), tmp_path / "web")
    assert main(["segment", "--image", str(SLICE), "--text", TEXT, "--example", str(EXAMPLE), str(EXAMPLE_MASK),
                 "--out", str(tmp_path / "cli.png"), "--model", str(tmp_path / "model"), "--steps", "1",
                 "--samples", "2"]) == 0
    web, cli = (np.asarray(Image.open(path)) for path in (view.files["mask"], tmp_path / "cli.png"))
    np.testing.assert_array_equal(web, cli)


def test_a_nifti_volume_gives_a_nifti_mask_in_its_geometry_with_progress_to_the_end(state, tmp_path):
    query, truth = volume_file(tmp_path / "in")
    fractions = []
    view = run_segment(state, request(query, truth=tmp_path / "in" / "volume_mask.nii.gz",
                                      settings=Settings(1, 2, batch_size=4)), tmp_path / "out", fractions.append)
    written = nib.load(view.files["mask"])
    assert written.shape == truth.shape and np.allclose(written.affine, nib.load(query).affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
    assert nib.load(view.files["uncertainty"]).shape == truth.shape
    assert len(view.display) == 9 and len(view.query.model_slices) == 7  # cut to the 7 slices with foreground
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == 2 * 2  # 2 batches, 2 passes
    assert 0 <= view.first_slice < 9
    assert "slice 4 of 9" in render_segment(view, 3)[2] and "this slice" in render_segment(view, 3)[2]


@pytest.mark.parametrize("kind", ["dicom file", "zipped series", "npy volume", "2-d nifti", "jpg"])
def test_every_query_kind_is_segmented_and_its_mask_keeps_the_query_grid(kind, state, tmp_path):
    from pydicom.data import get_testdata_file

    if kind == "dicom file":
        query, shape = Path(get_testdata_file("CT_small.dcm")), (128, 128)
    elif kind == "zipped series":
        query, shape = zipped_series(tmp_path)
    elif kind == "npy volume":
        query, shape = tmp_path / "stack.npy", (3, 40, 40)
        np.save(query, np.random.default_rng(0).random(shape).astype(np.float32))
    elif kind == "2-d nifti":
        query, shape = tmp_path / "slice.nii.gz", (50, 44)
        nib.save(nib.Nifti1Image(np.random.default_rng(1).random(shape).astype(np.float32), np.eye(4)), query)
    else:
        query, shape = tmp_path / "slice.jpg", (64, 64)
        Image.open(SLICE).save(query, quality=95)
    view = run_segment(state, request(query, settings=Settings(1, 2, normalization="ct" if "dicom" in kind or
                                                                "series" in kind else "percentile")), tmp_path / "out")
    mask = np.asarray(open_image(view.files["mask"], Limits()).array)
    assert mask.shape == shape and set(np.unique(mask)) <= {0, 1, 255}
    if len(view.display) == 1:  # a single slice also comes as the PNG that is shown
        png = view.files.get("mask PNG", view.files["mask"])
        assert np.asarray(Image.open(png)).shape == view.display.shape[1:]


def test_the_preview_shows_every_slice_of_a_volume_and_says_what_was_uploaded(state, tmp_path):
    query, _ = volume_file(tmp_path)
    preview = preview_query(query, "axial", "percentile", state.limits)
    assert preview.display.shape == (9, 24, 20) and 0 <= preview.display.min() and preview.display.max() <= 1
    assert preview.summary == "volume.nii.gz: 9 axial slices of 24 x 20 px (nifti)"


def test_examples_from_a_bank_follow_the_position_of_a_single_query_slice(state, imported_dataset, nnunet_folder,
                                                                          tmp_path):
    query = nnunet_folder / "imagesTs" / "colin_004_0000.nii.gz"
    view = run_segment(state, request(query, examples=[], bank=imported_dataset.root, bank_structure="putamen", k=2,
                                      instruction=""), tmp_path / "volume")
    assert nib.load(view.files["mask"]).shape == nib.load(query).shape
    low, high = (run_segment(state, request(SLICE, examples=[], bank=imported_dataset.root, bank_structure="putamen",
                                            k=1, position=position), tmp_path / str(position))
                 for position in (0.0, 1.0))
    assert low.result.mask.shape == high.result.mask.shape == (1, 64, 64)


# -------------------------------------------------------------------------------------------------- refusals
def nonbinary_mask(folder: Path) -> Path:
    values = np.zeros((64, 64), np.uint8)
    values[10:20, 10:20], values[30:40, 30:40] = 1, 2
    Image.fromarray(values).save(folder / "labels.png")
    return folder / "labels.png"


def small_mask(folder: Path) -> Path:
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(folder / "small.png")
    return folder / "small.png"


def bad_zip(folder: Path) -> Path:
    with zipfile.ZipFile(folder / "evil.zip", "w") as handle:
        handle.writestr("../outside.dcm", b"x")
    return folder / "evil.zip"


@pytest.mark.parametrize("change, message", [
    (lambda t: dict(query=t / "notes.txt"), "unsupported ending '.txt'"),
    (lambda t: dict(examples=[(EXAMPLE, small_mask(t))]), "differ in size once oriented"),
    (lambda t: dict(examples=[(EXAMPLE, nonbinary_mask(t))]), "must be binary"),
    (lambda t: dict(truth=small_mask(t)), "they must be the same grid"),
    (lambda t: dict(truth=nonbinary_mask(t)), "the truth mask labels.png must be binary"),
    (lambda t: dict(examples=[(EXAMPLE, None)]), "example 1: give both an image and its mask"),
    (lambda t: dict(examples=[(EXAMPLE, EXAMPLE_MASK)] * 6), "at most 5 example pairs"),
    (lambda t: dict(instruction="  "), "type an instruction"),
    (lambda t: dict(settings=Settings(0, 1)), "steps and samples must be >= 1"),
    (lambda t: dict(settings=replace(QUICK, register_examples=True)), "registering the examples needs at least 2"),
    (lambda t: dict(query=bad_zip(t)), "a path outside its folder"),
    (lambda t: dict(query=t / "missing.png"), "Image file not found"),
])
def test_bad_input_is_refused_in_one_line_and_the_next_request_works(change, message, state, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)) as refusal:
        run_segment(state, request(SLICE, **change(tmp_path)), tmp_path / "out")
    assert "\n" not in readable(refusal.value, state.workspace)
    assert run_segment(state, request(SLICE), tmp_path / "next").files["mask"].exists()


@pytest.mark.parametrize("limits, message", [
    (Limits(max_voxels=1000), "has 4,320 voxels, more than this server's limit of 1,000"),
    (Limits(max_slices=5), "has 7 slices to segment, more than this server's limit of 5"),
])
def test_a_volume_above_the_configured_limits_is_refused(limits, message, state, tmp_path):
    query, _ = volume_file(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_segment(replace(state, limits=limits), request(query), tmp_path / "out")


def test_cancel_stops_a_run_between_batches_and_frees_the_model_for_the_next(state, tmp_path):
    query, _ = volume_file(tmp_path)
    job = Job()
    seen = []

    def watch(fraction):
        seen.append(fraction)
        job.cancel()
        job.callback(fraction)

    job.callback(0.0)
    with pytest.raises(Cancelled, match="cancelled at 0% of the slices"):
        run_segment(state, request(query, settings=Settings(1, 1, batch_size=2)), tmp_path / "out", watch)
    assert len(seen) == 1 and not state.lock.locked()
    assert run_segment(state, request(query), tmp_path / "next").files["mask"].exists()


# ------------------------------------------------------------------------------------------- label a folder
@pytest.fixture(scope="module")
def case_folder(dataset_writers, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Two cases the imported dataset does not have (the deep grey head rotated, and cut), nnU-Net named, each its 8
    axial slices through the putamen (few slices: a quick run); their label maps."""
    folder = tmp_path_factory.mktemp("loop") / "imagesTs"
    folder.mkdir()
    labels = {}
    for name, (image, truth, affine) in zip(("scan_a", "scan_b"), dataset_writers.cases(5)[3:]):
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine).slicer[..., 8:16], folder / f"{name}_0000.nii.gz")
        labels[name] = truth[..., 8:16]
    return folder, labels


@pytest.fixture
def loop(imported_dataset, case_folder, tmp_path) -> tuple[FolderRequest, Path]:
    """The loop's choices: the case folder, a copy of the imported dataset (3 cases lend the putamen) as the bank
    that grows, 2 examples per slice, the quick decoder; and the folder its predictions go below."""
    bank = shutil.copytree(imported_dataset.root, tmp_path / "deepgrey")
    return FolderRequest(case_folder[0], bank, "putamen", k=2, settings=QUICK), tmp_path / "predictions"


def test_the_folder_is_listed_most_uncertain_first_as_predictions_json_ranks_it(state, loop):
    request, base = loop
    fractions = []
    view = run_folder(state, request, base, fractions.append)
    summary = json.loads(next(base.glob("*/predictions.json")).read_text())
    assert [case.name for case in view.cases] == summary["ranked_by_uncertainty"] and view.segmented == 2
    scores = [case.uncertainty for case in view.cases]
    assert scores == sorted(scores, reverse=True) and not any(case.in_bank for case in view.cases)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert folder_listing(state, request, base) == view.cases
    assert describe_case(view.cases[0]) == f"uncertainty {scores[0]:.4f}"
    assert run_folder(state, request, base).segmented == 0  # resumed: every case is finished


def test_a_cancelled_run_leaves_the_cases_unsegmented_and_listed(state, loop):
    request, base = loop
    job = Job()
    job.cancel()
    with pytest.raises(Cancelled):
        run_folder(state, request, base, job.callback)
    assert [(case.uncertainty, case.in_bank) for case in folder_listing(state, request, base)] == [(None, False)] * 2
    assert not state.lock.locked()


def test_an_accepted_case_joins_the_bank_and_the_rerun_segments_the_rest_with_the_grown_bank(state, loop, monkeypatch,
                                                                                             capsys):
    from segicl_data.bank import ExampleBank

    request, base = loop
    lending = len(bank_cases(request.bank, "putamen"))
    checked, rest = (case.name for case in run_folder(state, request, base).cases)
    view = open_case(state, request, base, checked)
    picture, spread, caption = render_segment(view, view.first_slice)
    assert picture.shape == spread.shape == (*view.display.shape[1:], 3) and "spread of 2 samples" in caption
    assert add_to_bank(state, request, base, checked) == f"added {checked} to deepgrey: putamen"
    assert main(["bank", "list", str(request.bank)]) == 0
    assert re.search(rf"putamen \(label 3\): {lending + 1} case\(s\): .*{checked}", capsys.readouterr().out)
    assert [(case.name, case.in_bank) for case in folder_listing(state, request, base)] == [(checked, True),
                                                                                            (rest, False)]
    record = next(base.glob(f"*/.predict/{checked}.json"))
    written = record.stat().st_mtime_ns
    bank_sizes = []

    class CountingBank(ExampleBank):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bank_sizes.append(len(self.structure.rows))

    monkeypatch.setattr("segicl.volume.ExampleBank", CountingBank)
    assert run_folder(state, request, base, again=True).segmented == 1
    assert bank_sizes == [lending + 1] and record.stat().st_mtime_ns == written  # one case, from the grown bank


def test_a_corrected_mask_off_the_cases_grid_is_refused_and_one_on_it_joins_the_bank(state, loop, case_folder,
                                                                                     tmp_path):
    request, base = loop
    affine = nib.load(case_folder[0] / "scan_b_0000.nii.gz").affine
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), affine), tmp_path / "wrong.nii.gz")
    manifest = (request.bank / "manifest.jsonl").read_bytes()
    with pytest.raises(ValueError, match=re.escape("the mask wrong.nii.gz is 10 x 10 x 10 voxels, the case 38 x 40 x "
                                                   "8: they must be the same grid")):
        add_to_bank(state, request, base, "scan_b", tmp_path / "wrong.nii.gz")
    assert (request.bank / "manifest.jsonl").read_bytes() == manifest
    putamen = (case_folder[1]["scan_b"] == 3).astype(np.uint8) * 255
    nib.save(nib.Nifti1Image(putamen, affine), tmp_path / "corrected.nii.gz")
    assert add_to_bank(state, request, base, "scan_b", tmp_path / "corrected.nii.gz") == \
        "added scan_b to deepgrey: putamen"
    assert "scan_b" in bank_cases(request.bank, "putamen")


@pytest.mark.parametrize("action, message", [
    (lambda s, r, b: open_case(s, r, b, "../scan_a"), "no case '../scan_a' in the folder imagesTs"),
    (lambda s, r, b: open_case(s, r, b, "scan_a"), "scan_a is not segmented yet: segment the folder first"),
    (lambda s, r, b: add_to_bank(s, r, b, "scan_a"), "scan_a is not segmented yet"),
    (lambda s, r, b: run_folder(s, replace(r, structure=None), b), "pick the structure"),
    (lambda s, r, b: run_folder(s, replace(r, settings=Settings(1, 1)), b), "--uncertainty needs --samples >= 2"),
])
def test_the_loop_refuses_what_it_cannot_do_in_one_line(action, message, state, loop):
    with pytest.raises(ValueError, match=re.escape(message)) as refusal:
        action(state, *loop)
    assert "\n" not in readable(refusal.value, state.workspace)


# ------------------------------------------------------------------------------------------------ image tasks
@pytest.mark.parametrize("task", ["segmentation", "synthesis", "denoising", "inpainting"])
def test_every_image_task_writes_its_output_beside_the_input(task, state, tmp_path):
    target = EXAMPLE_MASK if task in ("segmentation", "inpainting") else EXAMPLE
    region = SLICE_MASK if task == "inpainting" else None
    view = run_image_task(state, ImageTaskRequest(task, EXAMPLE, target if task != "inpainting" else EXAMPLE, SLICE,
                                                  region), tmp_path)
    written = np.asarray(Image.open(view.file))
    assert view.file.name == f"colin27_thalamus_slice_{task}.png" and written.shape == (64, 64)
    picture, result, caption = render_image_task(view, 0)
    assert picture.shape == result.shape == (64, 64, 3) and caption.startswith("slice 1 of 1")
    if task == "inpainting":  # outside the region the query is kept as it was
        outside = np.asarray(Image.open(SLICE_MASK)) == 0
        np.testing.assert_array_equal(written[outside], np.asarray(Image.open(SLICE))[outside])


def test_an_image_task_on_a_volume_keeps_its_geometry(state, tmp_path):
    query, mask = volume_file(tmp_path)
    view = run_image_task(state, ImageTaskRequest("segmentation", query, tmp_path / "volume_mask.nii.gz", query),
                          tmp_path / "out")
    assert nib.load(view.file).shape == mask.shape and len(view.display) == 9


@pytest.mark.parametrize("change, message", [
    (dict(task="inpainting"), "inpainting needs a region mask"),
    (dict(task="inpainting", region="nonbinary"), "the region mask labels.png must be binary"),
    (dict(prompt_target="small"), "must have the same shape"),
    (dict(query="small"), "prompt/query size mismatch"),
    (dict(task="colouring"), "unknown task 'colouring'"),
])
def test_bad_image_task_input_is_refused_in_one_line(change, message, state, tmp_path):
    files = {"nonbinary": nonbinary_mask(tmp_path), "small": small_mask(tmp_path)}
    fields = dict(task="segmentation", prompt_image=EXAMPLE, prompt_target=EXAMPLE_MASK, query=SLICE)
    fields.update({key: files.get(value, value) for key, value in change.items()})
    with pytest.raises(ValueError, match=re.escape(message)):
        run_image_task(state, ImageTaskRequest(**fields), tmp_path / "out")
