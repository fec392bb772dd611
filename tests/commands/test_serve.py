"""`segicl serve` (commands/serve.py): its flags, limits and example banks, and the page end to end in headless
Chromium (Debian's `chromium`, driven by Playwright; `make install` installs it): the server on a free local port,
a bad upload's message, the shipped example slice with its example pair and truth, the overlay, the mask
downloaded and checked; then a 64-slice volume, then MVG's segmentation on the Image-task tab; and the labelling loop
on a --folder of two cases (segment, open the most uncertain, add it to the bank, segment the rest again).
Screenshots and the two click -> overlay timings go to runs/serve/.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segicl_commands.cli import main
from segicl_commands.serve import UploadLimit, example_banks, known_structures

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = REPO / "runs" / "serve"


def test_bad_flags_and_missing_models_are_refused_in_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "--model: no SegICL model at" in capsys.readouterr().err
    assert main(["serve", "--max-slices", "0"]) == 2
    assert "--max-slices must be >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--examples-from", str(tmp_path)]) == 2
    assert "no slice dataset there" in capsys.readouterr().err
    assert main(["serve", "--folder", str(tmp_path / "missing")]) == 2
    assert f"--folder {tmp_path / 'missing'}: input folder not found" in capsys.readouterr().err


def test_the_banks_are_the_given_datasets_and_their_structures_are_offered(imported_dataset):
    banks = example_banks([imported_dataset.root])
    assert banks[f"deepgrey ({imported_dataset.root})"] == imported_dataset.root
    names, source = known_structures({"deepgrey": imported_dataset.root})
    assert {"thalamus", "caudate", "putamen"} <= set(names) and "brain" in names and source == "every atlas structure"


def test_an_upload_request_above_the_limit_is_answered_413_before_its_body_is_read():
    import asyncio

    calls, sent = [], []

    async def app(scope, receive, send):
        calls.append(scope["path"])

    async def send(message):
        sent.append(message)

    async def receive():
        raise AssertionError("the body must not be read")

    limited = UploadLimit(app, limit=1000)

    def post(path, length):
        headers = [] if length is None else [(b"content-length", str(length).encode())]
        scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
        asyncio.run(limited(scope, receive, send))

    post("/_nicegui/client/abc/upload/7", 2_000_000)
    post("/_nicegui/client/abc/upload/7", None)
    post("/_nicegui/client/abc/upload/7", 5000)
    post("/other", 2_000_000)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413, 411]
    assert calls == ["/_nicegui/client/abc/upload/7", "/other"]


# ------------------------------------------------------------------------------------------- in a browser
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def colin27_volume(path: Path) -> Path:
    """Colin27's brain (mricron-data) cut to the brain and resampled to 64 x 64 x 64: 64 axial slices of 64 px."""
    from scipy.ndimage import zoom

    from segicl_data.sources import mricron_file

    image = nib.load(mricron_file("ch2bet.nii.gz"))
    array = np.asarray(image.dataobj, dtype=np.float32)
    inside = np.argwhere(array > 0)
    low, high = inside.min(axis=0), inside.max(axis=0) + 1
    box = array[tuple(slice(a, b) for a, b in zip(low, high))]
    factors = np.array([64.0, 64.0, 64.0]) / box.shape
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] @ np.diag(1 / factors)
    affine[:3, 3] = image.affine[:3, :3] @ low + image.affine[:3, 3]
    nib.save(nib.Nifti1Image(zoom(box, factors, order=1).astype(np.float32), affine), path)
    return path


def case_folder(folder: Path, dataset_writers) -> Path:
    """Two cases the imported dataset does not have (its deep grey head rotated, and cut), nnU-Net named, each its 8
    axial slices through the putamen (a quick run)."""
    folder.mkdir()
    for name, (image, _, affine) in zip(("scan_a", "scan_b"), dataset_writers.cases(5)[3:]):
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine).slicer[..., 8:16], folder / f"{name}_0000.nii.gz")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, imported_dataset, dataset_writers):
    """`segicl serve` on a free port in its own process, as a user starts it, with a folder of cases to label and a
    copy of the imported dataset as the bank that grows; stopped (and its folder checked gone) after the module."""
    files = tmp_path_factory.mktemp("serve")
    log = files / "serve.log"
    bank = shutil.copytree(imported_dataset.root, files / "deepgrey")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "segicl_commands.cli", "serve", "--port", str(port), "--examples-from", str(bank),
               "--folder", str(case_folder(files / "imagesTs", dataset_writers))]
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"segicl serve did not start: {log.read_text()}")
        time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)
    workspace = re.search(r"uploads and outputs in (\S+),", log.read_text()).group(1)
    assert not Path(workspace).exists(), "the server left its temporary folder behind"


NO_CHROMIUM = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian's chromium is not at {CHROMIUM}: `make install` "
                                                                 "installs it (apt-get install chromium, needs root or sudo)")


@NO_CHROMIUM
@pytest.mark.timeout(120)
def test_the_page_segments_the_shipped_slice_and_a_volume_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (tmp_path / "notes.txt").write_text("not an image")
    volume = colin27_volume(tmp_path / "colin27_64.nii.gz")
    timings = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(server)

        def upload(testid: str, path: Path) -> None:
            page.locator(f"[data-testid={testid}] input[type=file]").set_input_files(str(path))

        message = page.locator("[data-testid=segment-message]")
        upload("segment-query", tmp_path / "notes.txt")
        expect(message).to_have_text(re.compile("notes.txt: not a file type this page reads"))
        upload("segment-query", EXAMPLES / "colin27_thalamus_slice.png")
        expect(message).to_have_text("")
        upload("segment-example-image-0", EXAMPLES / "mni152_thalamus_slice.png")
        upload("segment-example-mask-0", EXAMPLES / "mni152_thalamus_mask.png")
        upload("segment-truth", EXAMPLES / "colin27_thalamus_mask.png")
        page.locator("[data-testid=instruction]").fill("Segment the thalamus in this T1-weighted MRI slice.")
        expect(page.get_by_text("colin27_thalamus_mask.png")).to_be_visible()

        start = time.perf_counter()
        page.locator("[data-testid=run]").click()
        expect(page.locator("[data-testid=download-mask]")).to_be_visible(timeout=30_000)
        timings["slice_64px_s"] = round(time.perf_counter() - start, 2)
        summary = page.locator("[data-testid=segment-summary]").inner_text()
        assert "px segmented (red)" in summary and "Dice against the truth" in summary
        expect(page.locator("[data-testid=overlay] img")).to_have_attribute("src", re.compile("^data:image/png"))
        page.screenshot(path=str(ARTEFACTS / "segment_slice.png"), full_page=True)
        with page.expect_download() as download:
            page.locator("[data-testid=download-mask]").click()
        download.value.save_as(tmp_path / "mask.png")
        mask = np.asarray(Image.open(tmp_path / "mask.png"))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}

        upload("segment-query", volume)
        expect(page.locator("[data-testid=slice]")).to_be_visible()
        start = time.perf_counter()
        page.locator("[data-testid=run]").click()
        expect(page.locator("[data-testid=cancel]")).to_be_visible()
        expect(message).to_have_text(re.compile(r"done: \d\d slice\(s\)"), timeout=60_000)
        timings["volume_64_slices_s"] = round(time.perf_counter() - start, 2)
        timings["volume_slices_segmented"] = int(re.search(r"done: (\d+)", message.inner_text()).group(1))
        page.screenshot(path=str(ARTEFACTS / "segment_volume.png"), full_page=True)
        with page.expect_download() as download:
            page.locator("[data-testid=download-mask]").click()
        download.value.save_as(tmp_path / "mask.nii.gz")
        written = nib.load(tmp_path / "mask.nii.gz")
        assert written.shape == (64, 64, 64) and np.allclose(written.affine, nib.load(volume).affine, atol=1e-4)
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}

        page.locator("[data-testid=tab-image]").click()  # MVG: the example pair as the prompt, the slice as query
        upload("image-prompt-image", EXAMPLES / "mni152_thalamus_slice.png")
        upload("image-prompt-target", EXAMPLES / "mni152_thalamus_mask.png")
        upload("image-query", EXAMPLES / "colin27_thalamus_slice.png")
        expect(page.get_by_text("colin27_thalamus_slice.png").last).to_be_visible()
        page.locator("[data-testid=image-run]").click()
        expect(page.locator("[data-testid=download-image-result]")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTEFACTS / "image_task.png"), full_page=True)
        browser.close()
    timings["setting"] = "default decoder setting (1 step x 3 samples), one example pair, OMP_NUM_THREADS=" + \
        os.environ.get("OMP_NUM_THREADS", "unset")
    (ARTEFACTS / "timings.json").write_text(json.dumps(timings, indent=1))


@NO_CHROMIUM
@pytest.mark.timeout(120)
def test_the_labelling_loop_runs_on_the_page(server):
    from playwright.sync_api import expect, sync_playwright

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        page.locator("[data-testid=tab-folder]").click()
        message = page.locator("[data-testid=folder-message]")
        page.locator("[data-testid=folder-run]").click()
        expect(message).to_have_text(re.compile(r"done: 2 case\(s\) segmented"), timeout=60_000)
        cases = page.locator("[data-testid=folder-cases] button")
        expect(cases).to_have_count(2)
        checked = cases.first.inner_text()
        cases.first.click()
        expect(page.locator("[data-testid=folder-overlay] img")).to_have_attribute("src", re.compile("^data:image/png"))
        page.locator("[data-testid=folder-accept]").click()
        expect(message).to_have_text(re.compile(f"added {checked} to deepgrey: "))
        expect(page.get_by_text("in the bank")).to_have_count(1)
        page.screenshot(path=str(ARTEFACTS / "label_folder.png"), full_page=True)
        page.locator("[data-testid=folder-rerun]").click()
        expect(message).to_have_text(re.compile(r"done: 1 case\(s\) segmented"), timeout=60_000)
        browser.close()
