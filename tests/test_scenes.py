"""Scenes are validated before any work: each refusal names the file and the cause."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from geounet.errors import SceneError
from geounet.scene.source import open_scene, unique_stems
from tests.conftest import write_tif


def _img(bands: int = 3, h: int = 20, w: int = 30, dtype: str = "uint8") -> np.ndarray:
    return (np.arange(bands * h * w) % 200).reshape(bands, h, w).astype(dtype)


def test_valid_scene_is_described(tmp_path: Path) -> None:
    p = write_tif(tmp_path / "a.tif", _img())
    info = open_scene(p, in_channels=3)
    assert (info.width, info.height, info.count, info.epsg) == (30, 20, 3, 32633)
    assert info.bands == (1, 2, 3) and not info.has_mask and len(info.fingerprint) == 16


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        (lambda p: p.write_text("<html><body>not an image</body></html>"), "cannot be opened as a GeoTIFF"),
        (lambda p: write_tif(p, _img(), crs=None), "has no CRS"),
        (lambda p: write_tif(p, _img(), transform=None, crs="EPSG:32633"), "no geotransform"),
    ],
)
def test_refusals_name_file_and_cause(tmp_path: Path, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "bad.tif"
    make(p)
    with pytest.raises(SceneError) as ei:
        open_scene(p, in_channels=3)
    assert str(p) in str(ei.value) and needle in str(ei.value)


def test_vrt_named_tif_is_refused(tmp_path: Path) -> None:
    secret = write_tif(tmp_path / "secret.tif", _img())
    vrt = tmp_path / "innocent.tif"
    vrt.write_text(
        f'<VRTDataset rasterXSize="30" rasterYSize="20"><SRS>EPSG:32633</SRS>'
        f"<GeoTransform>0,1,0,0,0,-1</GeoTransform>"
        f'<VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename>{secret}'
        f"</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    with pytest.raises(SceneError, match="only GTiff/COG files are read"):
        open_scene(vrt, in_channels=1)


def test_pixel_budget_refuses_before_reading(tmp_path: Path) -> None:
    p = write_tif(tmp_path / "big.tif", _img(h=100, w=100))
    with pytest.raises(SceneError, match=r"10,000 pixels, above the pixel budget of 9,999"):
        open_scene(p, in_channels=3, max_pixels=9_999)


def test_band_count_mismatch_suggests_band_selection(tmp_path: Path) -> None:
    p = write_tif(tmp_path / "four.tif", _img(bands=4), photometric="MINISBLACK")
    with pytest.raises(SceneError, match=r"has 4 band\(s\) but the model takes 3.*bands: \[1, 2, 3\]"):
        open_scene(p, in_channels=3)
    assert open_scene(p, in_channels=3, bands=[3, 2, 1]).bands == (3, 2, 1)
    with pytest.raises(
        SceneError,
        match=r"band\(s\) \[5\] of bands \[1, 2, 5\] requested.*only 4 band\(s\); choose 3 of its bands \(--bands 1,2,3",  # noqa: E501
    ):
        open_scene(p, in_channels=3, bands=[1, 2, 5])


def test_alpha_band_is_skipped_automatically(tmp_path: Path) -> None:
    import rasterio
    from rasterio.enums import ColorInterp

    p = write_tif(tmp_path / "rgba.tif", _img(bands=4), photometric="RGB", alpha="YES")
    with rasterio.open(p) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha
    assert open_scene(p, in_channels=3).bands == (1, 2, 3)


def test_complex_dtype_is_refused(tmp_path: Path) -> None:
    p = write_tif(tmp_path / "c.tif", _img(dtype="complex64"))
    with pytest.raises(SceneError, match="data type complex64"):
        open_scene(p, in_channels=3)


def test_unreadable_and_dangling(tmp_path: Path) -> None:
    link = tmp_path / "dangling.tif"
    os.symlink(tmp_path / "gone.tif", link)
    with pytest.raises(SceneError, match="dangling symbolic link"):
        open_scene(link, in_channels=3)
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        p = write_tif(tmp_path / "locked.tif", _img())
        p.chmod(0)
        with pytest.raises(SceneError, match="not readable"):
            open_scene(p, in_channels=3)


def test_rotated_transform_is_accepted(tmp_path: Path) -> None:
    t = Affine(0.5, 0.1, 500000.0, 0.1, -0.5, 4650000.0)
    info = open_scene(write_tif(tmp_path / "r.tif", _img(), transform=t), in_channels=3)
    assert info.affine == t


def test_unique_stems_disambiguate_by_parent() -> None:
    assert unique_stems(["a/x.tif", "b/x.tif", "c/y.tif"]) == ["a_x", "b_x", "y"]
    assert unique_stems(["/vsis3/bucket/k/scene.tif"]) == ["scene"]
