"""Medical image I/O behind one small interface, modelled on nnU-Net v2's imageio.

A reader is chosen by the file ending (a directory is read as a DICOM series) and
always returns a :class:`MedicalImage`: the array plus its geometry. A writer is
chosen by the ending of the *output* path.

Conventions
-----------
* 3-D volumes are in voxel ``(i, j, k)`` order exactly as nibabel gives them. Nothing
  is reoriented on read, so writing an array with a reference gives back exactly the
  reference's shape and geometry. A DICOM series is transposed from SimpleITK's
  ``(z, y, x)`` to ``(x, y, z)`` so that it follows the same convention.
* 2-D images (PNG/JPG, a single DICOM file) are ``(rows, cols)``. Grayscale PNG/JPG
  stay ``(H, W)``; RGB/RGBA (and other multi-band modes) are returned ``(H, W, C)`` as
  stored, without silent conversion; palette (``P``) and 1-bit (``1``) images are
  converted to ``L`` (so a 1-bit image reads as 0/255 uint8).
* ``affine`` is always 4x4 and maps voxel indices to RAS+ world millimetres (the NIfTI
  convention). DICOM geometry (LPS+) is converted to RAS+ by negating the first two
  world axes. For 2-D images without geometry (PNG/JPG, DICOM without
  ImageOrientationPatient/ImagePositionPatient) the affine has the pixel spacing on
  the diagonal (1.0 for PNG); NPY arrays get the identity.
* ``spacing`` has one entry per spatial axis of ``array`` (the first ``min(ndim, 3)``
  axes; for ``(H, W, C)`` images the first two). It is the voxel size in mm.
* ``orientation`` holds nibabel ``aff2axcodes`` codes (e.g. ``"RAS"``) when the file
  carries geometry (NIfTI, DICOM with orientation tags); it is ``None`` otherwise.
* Value types: NIfTI integer data without scaling keep their dtype (label maps stay
  integer); anything scaled or floating is read as float32. DICOM pixel data are
  returned as modality values (``stored * RescaleSlope + RescaleIntercept``, i.e.
  Hounsfield units for CT) as float32 for CT and whenever rescale tags are present.
* NIfTI stores affines as float32, so an affine survives a NIfTI round trip to float32
  precision; writing with a NIfTI reference copies its sform/qform fields verbatim,
  which preserves the geometry bit for bit.
* Non-finite values (NaN/inf) are read as they are; call :func:`check_finite` to refuse
  them (and :func:`check_not_constant` to refuse an image of one value).
* Every refusal is one line: a file that cannot be read is an :class:`ImageReadError` naming it, a NIfTI header
  that announces more data than its file can hold is refused before anything is allocated, and a failed write
  (a read-only folder, a full disk) is a ValueError naming the file (:func:`writing`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from nibabel.affines import voxel_sizes
from PIL import Image
from pydicom.multival import MultiValue

from segicl_data.atomic import partial_path

__all__ = [
    "FORMATS",
    "SUPPORTED_READ_ENDINGS",
    "SUPPORTED_WRITE_ENDINGS",
    "ImageReadError",
    "MedicalImage",
    "check_finite",
    "check_not_constant",
    "ending_of",
    "one_line",
    "read_image",
    "write_image",
    "writing",
]

FORMATS: tuple[str, ...] = ("nifti", "dicom", "dicom-series", "png", "npy")
SUPPORTED_READ_ENDINGS: tuple[str, ...] = (
    ".nii",
    ".nii.gz",
    ".dcm",
    ".dicom",
    ".png",
    ".jpg",
    ".jpeg",
    ".npy",
)
SUPPORTED_WRITE_ENDINGS: tuple[str, ...] = (".nii", ".nii.gz", ".png", ".npy")

_DICOM_ENDINGS = (".dcm", ".dicom")
# DICOM patient coordinates are LPS+, NIfTI world coordinates are RAS+.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_HEADER_KEY = "nifti_header"
# Deflate expands its input at most about 1032-fold: a .nii.gz cannot hold more data than this many times its size.
_DEFLATE_MAX_RATIO = 1032
# Slice gaps of a DICOM series may differ by this much (relative) before the series counts as missing slices.
_SLICE_GAP_TOLERANCE = 0.01


class ImageReadError(ValueError):
    """A file exists but could not be read as the image format its ending names."""


@dataclass(frozen=True, eq=False)
class MedicalImage:
    """An image array together with its geometry.

    Frozen so fields cannot be rebound; the arrays themselves are not locked or copied.
    """

    array: np.ndarray
    """Image data: volumes in voxel (i, j, k) order, 2-D images as (rows, cols[, C])."""
    affine: np.ndarray
    """4x4 float64 matrix mapping voxel indices to RAS+ world millimetres."""
    spacing: tuple[float, ...]
    """Voxel size in mm, one entry per spatial axis of ``array``."""
    orientation: str | None
    """Axis codes such as ``"RAS"`` from ``nibabel.aff2axcodes``; None without geometry."""
    path: str
    """The file or directory the image was read from."""
    format: str
    """One of ``FORMATS``: "nifti", "dicom", "dicom-series", "png" or "npy"."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Small extras, e.g. DICOM Modality, RescaleSlope/Intercept, window centre/width."""

    def __post_init__(self) -> None:
        if self.affine.shape != (4, 4):
            raise ValueError(f"{self.path}: affine must be 4x4, got {self.affine.shape}")
        if len(self.spacing) > self.array.ndim:
            raise ValueError(
                f"{self.path}: {len(self.spacing)} spacings for a {self.array.ndim}-D array"
            )
        if self.format not in FORMATS:
            raise ValueError(f"{self.path}: unknown format {self.format!r}; expected one of {FORMATS}")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The shape of the spatial axes (those that ``spacing`` describes)."""
        return tuple(self.array.shape[: len(self.spacing)])


# ----------------------------------------------------------------------------- helpers


def ending_of(path: str | Path) -> str:
    """Return the lower-case file ending of ``path``, treating ``.nii.gz`` as one ending."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def check_finite(image: MedicalImage) -> None:
    """Raise ValueError naming the file and the count of NaN/inf voxels, if there are any."""
    array = image.array
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating)):
        return
    n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if n_bad:
        raise ValueError(
            f"{image.path}: {n_bad} non-finite voxels (NaN/inf) out of {array.size}"
        )


def check_not_constant(array: np.ndarray, name: str) -> None:
    """Raise ValueError naming ``name`` when every voxel of ``array`` has one value: an image without contrast has
    nothing in it to segment."""
    if array.size and array.min() == array.max():
        raise ValueError(f"{name} is constant (all {array.size:,} voxel(s) are {array.flat[0]:g}): there is nothing "
                         "in it to segment")


def one_line(error: BaseException) -> str:
    """An exception's message on one line (library messages may span several)."""
    return " ".join(str(error).split())


def _orientation(affine: np.ndarray, path: Path) -> str:
    """The axis codes of an affine ("RAS"); an affine with NaN/inf, or that gives a voxel axis no direction, is
    refused."""
    if not np.isfinite(affine).all():
        raise ImageReadError(f"{path}: the affine holds NaN/inf values: {np.round(affine, 4).tolist()}")
    codes = nib.aff2axcodes(affine)
    if None in codes:
        raise ImageReadError(f"{path}: the affine gives voxel axis {codes.index(None)} no direction in space (a zero "
                             f"or repeated column): {np.round(affine, 4).tolist()}")
    return "".join(codes)


def _n_spatial(array: np.ndarray) -> int:
    return min(array.ndim, 3)


def _float_tuple(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@contextlib.contextmanager
def _reading(path: Path, kind: str) -> Iterator[None]:
    """Turn any library error raised while reading into an ImageReadError naming the file."""
    try:
        yield
    except ImageReadError:
        raise
    # Deliberately broad: nibabel, gzip, pydicom, Pillow and SimpleITK each raise their own
    # zoo of exception types (ImageFileError, BadGzipFile, EOFError, InvalidDicomError,
    # UnidentifiedImageError, RuntimeError, ...) for a corrupt file.
    except Exception as error:
        raise ImageReadError(
            f"Could not read {kind} file {path}: {type(error).__name__}: {one_line(error)}"
        ) from error


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OS error raised while writing (a read-only folder, a full disk) into a ValueError naming the file."""
    try:
        yield
    except OSError as error:
        raise ValueError(f"Cannot write {path}: {error.strerror or one_line(error)}") from None


@contextlib.contextmanager
def _itk_quiet() -> Iterator[None]:
    """Keep ITK/GDCM from printing C++ warnings to the terminal: the readers raise their own errors instead."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


# ----------------------------------------------------------------------------- readers


def _nifti_array(img: nib.Nifti1Image | nib.Nifti2Image) -> np.ndarray:
    """Integer data without scaling keep their dtype; everything else becomes float32."""
    # After loading, nibabel moves scl_slope/scl_inter from the header onto the proxy.
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    unscaled = slope == 1.0 and inter == 0.0
    if unscaled and np.issubdtype(img.get_data_dtype(), np.integer):
        return np.asarray(np.asanyarray(img.dataobj))
    return img.get_fdata(dtype=np.float32)


def _check_nifti_size(img: nib.Nifti1Image | nib.Nifti2Image, path: Path) -> None:
    """Refuse a header that announces more data than the file can hold (a truncated file, or a corrupt header that
    claims, say, 10^12 voxels) before any of it is allocated."""
    declared = math.prod(img.shape) * img.get_data_dtype().itemsize
    on_disk = path.stat().st_size
    if ending_of(path) == ".nii.gz":
        room = on_disk * _DEFLATE_MAX_RATIO
    else:
        room = on_disk - int(img.header["vox_offset"])
    if declared > room:
        raise ImageReadError(
            f"{path}: the header declares shape {img.shape} = {math.prod(img.shape):,} voxels ({declared:,} bytes), "
            f"more than the file can hold ({on_disk:,} bytes on disk): a truncated or corrupt file"
        )


def _read_nifti(path: Path) -> MedicalImage:
    with _reading(path, "NIfTI"):
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ImageReadError(f"{path} is not a NIfTI file (nibabel read {type(img).__name__})")
        _check_nifti_size(img, path)
        array = _nifti_array(img)
        affine = np.asarray(img.affine, dtype=np.float64)
        header = img.header
        meta = {
            _NIFTI_HEADER_KEY: header.copy(),
            "sform_code": int(header["sform_code"]),
            "qform_code": int(header["qform_code"]),
        }
    spacing = _float_tuple(voxel_sizes(affine)[: _n_spatial(array)])
    return MedicalImage(array, affine, spacing, _orientation(affine, path), str(path), "nifti", meta)


def _first_float(value: Any) -> float:
    """DICOM numeric tags may be multi-valued (e.g. two windows); take the first value."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)


def _dicom_meta(ds: pydicom.Dataset) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for keyword in ("Modality", "PhotometricInterpretation", "SeriesInstanceUID"):
        if keyword in ds:
            meta[keyword] = str(ds.data_element(keyword).value)
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds and ds.data_element(keyword).value not in (None, ""):
            meta[keyword] = _first_float(ds.data_element(keyword).value)
    return meta


def _dicom_pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm; projection X-ray stores ImagerPixelSpacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds and ds.data_element(keyword).value:
            row, col = _float_tuple(ds.data_element(keyword).value)[:2]
            return row, col
    return None


def _dicom_slice_affine(ds: pydicom.Dataset, spacing: tuple[float, float]) -> np.ndarray | None:
    """RAS+ affine of a (rows, cols) slice, or None without orientation/position tags."""
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        return None
    orientation = np.array(_float_tuple(ds.ImageOrientationPatient))
    # IOP's first triplet is the direction along a row (column index grows), the second
    # the direction down a column (row index grows); array axis 0 is the row index.
    along_row, along_col = orientation[:3], orientation[3:]
    thickness = float(ds.get("SliceThickness") or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = along_col * spacing[0]
    lps[:3, 1] = along_row * spacing[1]
    lps[:3, 2] = np.cross(along_row, along_col) * thickness
    lps[:3, 3] = _float_tuple(ds.ImagePositionPatient)
    return _LPS_TO_RAS @ lps


def _dicom_modality_values(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """Apply RescaleSlope/Intercept (HU for CT) when present or when the modality is CT."""
    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds
    is_colour = int(ds.get("SamplesPerPixel", 1)) > 1
    if is_colour or not (has_rescale or ds.get("Modality") == "CT"):
        return pixels
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def _read_dicom_file(path: Path) -> MedicalImage:
    with _reading(path, "DICOM"):
        ds = pydicom.dcmread(str(path))
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ImageReadError(
                f"{path} is a multi-frame DICOM file, which is not supported; "
                "export it as a single-frame series (a folder) or as NIfTI"
            )
        array = _dicom_modality_values(ds, ds.pixel_array)
        meta = _dicom_meta(ds)
        pixel_spacing = _dicom_pixel_spacing(ds)
    spacing = pixel_spacing or (1.0, 1.0)
    affine = _dicom_slice_affine(ds, spacing)
    orientation = None if affine is None else _orientation(affine, path)
    if affine is None:
        affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    return MedicalImage(array, affine, spacing, orientation, str(path), "dicom", meta)


def _sitk_ras_affine(image: sitk.Image) -> np.ndarray:
    """RAS+ affine for SimpleITK's (x, y[, z]) index order, from origin/spacing/direction."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    lps[:dim, :dim] = direction @ np.diag(image.GetSpacing())
    lps[:dim, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ lps


def _sitk_to_ijk(image: sitk.Image) -> np.ndarray:
    """SimpleITK arrays are (z, y, x[, C]); reverse the spatial axes to (x, y, z[, C])."""
    array = sitk.GetArrayFromImage(image)
    dim = image.GetDimension()
    axes = tuple(reversed(range(dim))) + tuple(range(dim, array.ndim))
    return np.ascontiguousarray(array.transpose(axes))


def _pick_series(path: Path) -> tuple[str, tuple[str, ...], int]:
    """The series with the most files in ``path`` (ties: smallest UID), its files, the count."""
    # GDCM prints a C++ warning for a folder without series; we raise our own error instead.
    with _itk_quiet():
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not series_ids:
        raise ImageReadError(f"No DICOM series found in directory {path}")
    files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid) for uid in series_ids}
    chosen = min(files, key=lambda uid: (-len(files[uid]), uid))
    return chosen, tuple(files[chosen]), len(series_ids)


_POSITION_TAG = "0020|0032"  # ImagePositionPatient
_SERIES_TAGS = {
    "Modality": "0008|0060",
    "RescaleIntercept": "0028|1052",
    "RescaleSlope": "0028|1053",
    "WindowCenter": "0028|1050",
    "WindowWidth": "0028|1051",
}


def _series_meta(reader: sitk.ImageSeriesReader) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for keyword, tag in _SERIES_TAGS.items():
        if not reader.HasMetaDataKey(0, tag):
            continue
        value = reader.GetMetaData(0, tag).strip()
        if keyword == "Modality":
            meta[keyword] = value
        elif value:
            meta[keyword] = float(value.split("\\")[0])
    return meta


def _check_even_slices(reader: sitk.ImageSeriesReader, image: sitk.Image, path: Path) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal: a slice file is missing or could not
    be read, and as one volume the series would have the wrong geometry."""
    count = image.GetDepth()
    if count < 3 or not all(reader.HasMetaDataKey(i, _POSITION_TAG) for i in range(count)):
        return
    normal = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    positions = [_float_tuple(reader.GetMetaData(i, _POSITION_TAG).split("\\")) for i in range(count)]
    gaps = np.diff(np.sort(np.asarray(positions) @ normal))
    if gaps.max() - gaps.min() > _SLICE_GAP_TOLERANCE * gaps.max():
        raise ImageReadError(
            f"{path}: the slices of the series are not evenly spaced (gaps from {gaps.min():g} to {gaps.max():g} mm "
            f"over {count} readable slices): a slice file is missing or unreadable"
        )


def _read_dicom_series(path: Path) -> MedicalImage:
    with _reading(path, "DICOM series"):
        series_uid, files, n_series = _pick_series(path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        with _itk_quiet():  # ITK warns of uneven slices; _check_even_slices refuses them
            image = reader.Execute()  # GDCM applies RescaleSlope/Intercept itself
        _check_even_slices(reader, image, path)
        array = _sitk_to_ijk(image)
        meta = _series_meta(reader)
    if meta.get("Modality") == "CT" or np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    meta.update(SeriesInstanceUID=series_uid, n_files=len(files), n_series_in_folder=n_series)
    affine = _sitk_ras_affine(image)
    spacing = _float_tuple(image.GetSpacing())
    return MedicalImage(array, affine, spacing, _orientation(affine, path), str(path), "dicom-series", meta)


def _read_raster(path: Path) -> MedicalImage:
    with _reading(path, "image"):
        with Image.open(path) as img:
            meta = {"mode": img.mode, "file_format": img.format}
            if img.mode in ("P", "1"):
                img = img.convert("L")
            array = np.array(img)
    return MedicalImage(array, np.eye(4), (1.0, 1.0), None, str(path), "png", meta)


def image_from_array(array: np.ndarray, name: str = "array") -> MedicalImage:
    """An array without geometry, as an NPY file holds one: a 2-D slice, or a stack of display slices [S, H, W]."""
    array = np.asarray(array)
    return MedicalImage(array, np.eye(4), (1.0,) * _n_spatial(array), None, name, "npy", {})


def _read_npy(path: Path) -> MedicalImage:
    with _reading(path, "NPY"):
        array = np.load(path, allow_pickle=False)
    return image_from_array(array, str(path))


_READERS: dict[str, Callable[[Path], MedicalImage]] = {
    ".nii": _read_nifti,
    ".nii.gz": _read_nifti,
    ".dcm": _read_dicom_file,
    ".dicom": _read_dicom_file,
    ".png": _read_raster,
    ".jpg": _read_raster,
    ".jpeg": _read_raster,
    ".npy": _read_npy,
}


def read_image(path: str | Path) -> MedicalImage:
    """Read an image file (chosen by its ending) or a DICOM series folder.

    Raises FileNotFoundError if ``path`` does not exist, ValueError for an unsupported
    ending and :class:`ImageReadError` for a file or folder that cannot be read.
    """
    path = Path(path)
    if not path.exists():
        leads = f" (a symbolic link to {os.readlink(path)}, which leads to no file)" if path.is_symlink() else ""
        raise FileNotFoundError(f"Image file not found: {path}{leads}")
    if path.is_dir():
        return _read_dicom_series(path)
    ending = ending_of(path)
    reader = _READERS.get(ending)
    if reader is None:
        raise ValueError(
            f"Cannot read {path}: unsupported ending {ending!r}; supported endings are "
            f"{', '.join(SUPPORTED_READ_ENDINGS)} or a directory holding a DICOM series"
        )
    return reader(path)


# ----------------------------------------------------------------------------- writers


def _nifti_dtype(path: Path, array: np.ndarray) -> np.dtype:
    """A NIfTI-friendly on-disk dtype that holds ``array`` without loss."""
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    if array.dtype == np.float16:
        return np.dtype(np.float32)
    if array.dtype in (np.int64, np.uint64):
        # nibabel refuses implicit 64-bit integers; labels almost always fit in int32.
        info = np.iinfo(np.int32)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return np.dtype(np.int32)
        return array.dtype
    if np.issubdtype(array.dtype, np.number):
        return array.dtype
    raise ValueError(f"Cannot write {path}: NIfTI cannot store dtype {array.dtype}")


def _nifti_from_reference_header(
    array: np.ndarray, dtype: np.dtype, header: nib.Nifti1Header
) -> nib.Nifti1Image:
    """Reuse the reference header so its sform/qform fields are written verbatim."""
    header = header.copy()
    header.set_data_shape(array.shape)
    header.set_data_dtype(dtype)
    header.set_slope_inter(None, None)  # the reference's scaling does not apply to new data
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    # Passing the header's own best affine makes nibabel leave the s/q-form fields untouched.
    return image_class(array.astype(dtype, copy=False), header.get_best_affine(), header=header)


def _write_nifti(path: Path, array: np.ndarray, reference: MedicalImage | None) -> None:
    dtype = _nifti_dtype(path, array)
    header = None if reference is None else reference.meta.get(_NIFTI_HEADER_KEY)
    if header is not None:
        img = _nifti_from_reference_header(array, dtype, header)
    else:
        affine = np.eye(4) if reference is None else reference.affine
        img = nib.Nifti1Image(array.astype(dtype, copy=False), affine, dtype=dtype)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _png_uint8(path: Path, array: np.ndarray) -> np.ndarray:
    """Convert a 2-D mask, label map or [0, 1] float image to uint8, or refuse."""
    if array.ndim != 2:
        raise ValueError(f"Cannot write {path}: PNG output takes 2-D arrays only, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo >= 0 and hi <= 1:
            return array.astype(np.uint8) * 255  # binary mask: make it visible
        if lo >= 0 and hi <= 255:
            return array.astype(np.uint8)
        raise ValueError(
            f"Cannot write {path}: integer values span [{lo}, {hi}], PNG output takes 0..255; "
            "write .nii.gz or .npy instead"
        )
    if np.issubdtype(array.dtype, np.floating):
        finite = bool(np.isfinite(array).all())
        if finite and (array.size == 0 or (array.min() >= 0.0 and array.max() <= 1.0)):
            return np.rint(array * 255.0).astype(np.uint8)
        raise ValueError(
            f"Cannot write {path}: float PNG output needs finite values in [0, 1]; "
            "write .nii.gz or .npy instead"
        )
    raise ValueError(f"Cannot write {path}: PNG output cannot store dtype {array.dtype}")


def _write_png(path: Path, array: np.ndarray, reference: MedicalImage | None) -> None:
    Image.fromarray(_png_uint8(path, array)).save(path)


def _write_npy(path: Path, array: np.ndarray, reference: MedicalImage | None) -> None:
    np.save(path, array, allow_pickle=False)


_WRITERS: dict[str, Callable[[Path, np.ndarray, MedicalImage | None], None]] = {
    ".nii": _write_nifti,
    ".nii.gz": _write_nifti,
    ".png": _write_png,
    ".npy": _write_npy,
}


def _check_shape(path: Path, array: np.ndarray, reference: MedicalImage) -> None:
    """The array's leading (spatial) axes must match the reference's spatial shape."""
    expected = reference.spatial_shape
    if array.shape[: len(expected)] != expected or array.ndim < len(expected):
        raise ValueError(
            f"Cannot write {path}: array shape {array.shape} does not match the spatial shape "
            f"{expected} of reference {reference.path} (full shape {reference.array.shape})"
        )


def write_image(path: str | Path, array: np.ndarray, reference: MedicalImage | None = None) -> Path:
    """Write ``array`` in the format named by the ending of ``path`` and return the path.

    With a ``reference`` the array's spatial shape must equal the reference's and the
    reference's geometry is written (NIfTI only; PNG and NPY carry no geometry).
    Parent directories are created as needed. The file appears whole or not at all: it is written under a hidden
    name beside ``path`` and renamed onto it, so an interrupted write never leaves a half-written image.
    """
    path = Path(path)
    ending = ending_of(path)
    if ending in _DICOM_ENDINGS:
        raise ValueError(f"Cannot write {path}: DICOM output is not supported; write .nii.gz instead")
    writer = _WRITERS.get(ending)
    if writer is None:
        raise ValueError(
            f"Cannot write {path}: unsupported ending {ending!r}; supported endings are "
            f"{', '.join(SUPPORTED_WRITE_ENDINGS)}"
        )
    array = np.asarray(array)
    if reference is not None:
        _check_shape(path, array, reference)
    partial = partial_path(path)
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            writer(partial, array, reference)
            os.replace(partial, path)
    except ValueError as error:  # a writer's refusal names the file the caller asked for
        raise ValueError(str(error).replace(str(partial), str(path))) from None
    finally:
        if partial.exists():  # what a failed writer left (nothing where the folder could not be written at all)
            partial.unlink()
    return path
