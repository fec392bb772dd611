"""`segicl serve`: the web app (commands/webapp.py) on a local port, offline, on the shipped weights.

It binds 127.0.0.1 unless told otherwise, opens no browser, and calls nowhere: NiceGUI has no usage statistics, its
remote-access relay (on_air) stays off and every script and font it serves ships inside the package. Uploads are
limited in size twice (the browser refuses a larger file, the server a larger request) and land, with every output,
in one temporary folder that is removed when the server stops (each client's part when the client goes).
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
from pathlib import Path

from segicl_commands.mvg import DEFAULT_MVG_WEIGHTS
from segicl_commands.webapp import Limits

DEFAULT_PORT = 7860


def add_serve_command(commands, default_weights: Path) -> None:
    serve = commands.add_parser(
        "serve", help="a local web app: segment an upload from text + examples, label a folder, run MVG's image tasks",
        description="Start the web app (docs: how-to/web-app): a Segment tab (SegICL: query upload, instruction, 0-5 "
                    "example pairs or a dataset's example bank, overlay, uncertainty, Dice, downloads), a "
                    "Label-a-folder tab (the labelling loop of `segicl predict` and `segicl bank add` on a --folder) "
                    "and an Image-task tab (MVG). Offline; binds 127.0.0.1 by default.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument("--model", type=Path, default=default_weights,
                       help="SegICL model folder (default: shipped tiny)")
    serve.add_argument("--mvg-model", type=Path, default=DEFAULT_MVG_WEIGHTS,
                       help="MVG model folder (default: shipped tiny)")
    serve.add_argument("--examples-from", type=Path, action="append", default=[], metavar="DATASET",
                       help="a built or imported dataset (`segicl data import`) whose cases lend examples (repeat for "
                            "several); the built-in dataset is offered too when it is built")
    serve.add_argument("--folder", type=Path, action="append", default=[], metavar="DIR",
                       help="a folder of cases (as `segicl predict -i` reads) that the Label-a-folder tab segments "
                            "and whose checked cases grow an --examples-from dataset's bank (repeat for several); the "
                            "page offers only these folders")
    serve.add_argument("--max-upload-mb", type=float, default=Limits.upload_bytes / 2**20,
                       help=f"largest upload in MiB (default: {Limits.upload_bytes / 2**20:.0f})")
    serve.add_argument("--max-voxels", type=int, default=Limits.max_voxels,
                       help=f"largest image in voxels (default: {Limits.max_voxels:,})")
    serve.add_argument("--max-slices", type=int, default=Limits.max_slices,
                       help=f"most slices one segmentation runs (default: {Limits.max_slices})")
    serve.set_defaults(handler=command_serve)


def check_serve_flags(args: argparse.Namespace) -> Limits:
    from segicl_commands.arguments import check_at_least
    from segicl_data.cases import list_input_cases
    from segicl_data.model_folders import check_model_folder

    check_at_least(args, port=1, max_upload_mb=0.001, max_voxels=1, max_slices=1)
    if args.port > 65535:
        raise ValueError(f"--port must be <= 65535, got {args.port}")
    check_model_folder(args.model, "SegICL", "--model")
    check_model_folder(args.mvg_model, "MVG", "--mvg-model")
    for folder in args.examples_from:
        if not (folder / "manifest.jsonl").exists():
            raise FileNotFoundError(f"--examples-from {folder}: no slice dataset there (manifest.jsonl missing); "
                                    "`segicl data import FOLDER` makes one")
    for folder in args.folder:
        try:
            list_input_cases(folder)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"--folder {folder}: {error}") from None
    return Limits(int(args.max_upload_mb * 2**20), args.max_voxels, args.max_slices)


def example_banks(folders: list[Path]) -> dict[str, Path]:
    """The datasets offered as example banks, by a short name: the built-in one if it is built, then `folders`."""
    from segicl_data.build import DEFAULT_CACHE, DatasetConfig

    banks = {}
    built = DEFAULT_CACHE / DatasetConfig().folder_name()
    if (built / "manifest.jsonl").exists():
        banks["built-in atlases"] = built
    return banks | by_name(folders)


def by_name(folders: list[Path]) -> dict[str, Path]:
    """Folders by the name the page shows: the folder's name and, to tell two apart, its path."""
    return {f"{folder.name} ({folder})": folder for folder in folders}


def known_structures(banks: dict[str, Path]) -> tuple[list[str], str]:
    """Structure names for the instruction box: the built dataset's training structures (the names the model's
    tokenizer was made from), else every structure of the atlases; the banks' own structures added."""
    from segicl_data.bank import bank_structures
    from segicl_data.dataset import SliceDataset
    from segicl_data.tasks import all_structures

    names: set[str] = set()
    source = "every atlas structure"
    for name, folder in banks.items():
        dataset = SliceDataset(folder)
        if name == "built-in atlases":
            names |= {row["name"] for row in dataset.rows if row["kind"] != "multiclass" and not row["held_out"]}
            source = "the model's training structures"
        else:
            names |= set(bank_structures(dataset))
    if source == "every atlas structure":
        names |= {structure.name for structure in all_structures()}
    return sorted(names, key=str.lower), source


class UploadLimit:
    """ASGI middleware: an upload request (POST .../upload/...) larger than `limit` bytes (plus the form's
    envelope) is answered 413 before its body is read; one without a length 411."""

    ENVELOPE = 64 * 1024

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and "/upload/" in scope["path"]:
            length = dict(scope["headers"]).get(b"content-length")
            status = 411 if length is None else 413 if int(length) > self.limit + self.ENVELOPE else None
            if status is not None:
                from starlette.responses import PlainTextResponse

                text = "length required" if status == 411 else f"upload larger than {self.limit} bytes"
                await PlainTextResponse(text, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def command_serve(args: argparse.Namespace) -> int:
    limits = check_serve_flags(args)
    workspace = Path(tempfile.mkdtemp(prefix="segicl-serve-"))
    atexit.register(shutil.rmtree, workspace, ignore_errors=True)
    # Everything the server writes goes below the workspace: the uploads' spooled request bodies (tempfile), and
    # NiceGUI's storage (never used by this app, but its folder would otherwise appear in the working directory).
    tempfile.tempdir = str(workspace)
    os.environ["NICEGUI_STORAGE_PATH"] = str(workspace / ".nicegui")
    os.environ.pop("PYTEST_CURRENT_TEST", None)  # NiceGUI reads it as "inside pytest" and would pick its test port

    from mvg_head.pipeline import MVGPipeline
    from segicl.pipeline import SegICLPipeline

    from segicl_commands.webapp import AppState, register_page

    banks = example_banks(args.examples_from)
    structures, source = known_structures(banks)
    state = AppState(SegICLPipeline.from_pretrained(args.model), MVGPipeline.from_pretrained(args.mvg_model), limits,
                     workspace, banks, structures, source, folders=by_name(args.folder), model_folder=args.model)

    from nicegui import app, ui

    register_page(state)
    app.add_middleware(UploadLimit, limit=limits.upload_bytes)
    app.on_shutdown(lambda: shutil.rmtree(workspace, ignore_errors=True))
    print(f"segicl serve: http://{args.host}:{args.port} (SegICL {args.model}, MVG {args.mvg_model}; uploads and "
          f"outputs in {workspace}, removed on exit; Ctrl-C stops)", flush=True)
    ui.run(host=args.host, port=args.port, title="segicl", reload=False, show=False, on_air=None,
           show_welcome_message=False, uvicorn_logging_level="warning", fastapi_docs=False)
    return 0
