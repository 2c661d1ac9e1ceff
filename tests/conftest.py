"""Shared fixtures: tiny GeoTIFFs with real CRSs, small checkpoints, an in-process Dask client."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = (REPO / ".." / "shared" / "data" / "real").resolve()


# A north-up 0.5 m grid in UTM 33N: the default placement of test scenes.
UTM_HALF_METRE = Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform: Affine | None = UTM_HALF_METRE,
    nodata: float | None = None,
    tiled: bool = True,
    **extra: object,
) -> Path:
    """Write ``data`` (bands, h, w) as a GeoTIFF; None for crs/transform leaves them out."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile: dict[str, object] = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype.name,
        compress="deflate",
    )
    if tiled and data.shape[1] >= 16 and data.shape[2] >= 16:
        profile.update(
            tiled=True,
            blockxsize=16 * max(1, min(16, data.shape[2] // 16)),
            blockysize=16 * max(1, min(16, data.shape[1] // 16)),
        )
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def smooth_image(shape: Sequence[int], seed: int = 0, dtype: str = "uint8") -> np.ndarray:
    """A smooth random image (bands, h, w) with structure at several scales."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = rng.random(shape).astype(np.float32)
    img = np.stack([gaussian_filter(b, 3) * 0.7 + gaussian_filter(b, 0.8) * 0.3 for b in img])
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    if np.dtype(dtype).kind in "ui":
        return (img * 255).astype(dtype)
    return img.astype(dtype)


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give BatchNorm layers realistic, non-trivial statistics (eval-mode BN is no identity).

    Statistics are accumulated from forward passes over random inputs in train mode, then
    the affine parameters are perturbed, so a random model's output varies with its input.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, model.spec.in_channels, 64, 64, generator=g))
        for m in bns:
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.momentum = 0.1
    model.eval()


def make_checkpoint(
    path: Path,
    *,
    arch: str = "unet",
    in_channels: int = 3,
    classes: Sequence[str] = ("building", "road"),
    mode: str = "multilabel",
    width: int = 4,
    depth: int = 3,
    seed: int = 0,
    **save_kw: object,
) -> Path:
    """A small random-weight checkpoint with non-trivial BatchNorm statistics."""
    import torch

    from geounet import create_model, save_checkpoint

    torch.manual_seed(seed)
    model = create_model(arch, in_channels=in_channels, classes=tuple(classes), mode=mode, width=width, depth=depth)
    randomize_batchnorm(model, seed)
    model.eval()
    save_checkpoint(model, path, **save_kw)
    return path


@pytest.fixture(scope="session")
def dask_local() -> Iterator[object]:
    """One in-process Dask cluster (threads) shared by the tests that drive the pipeline."""
    from distributed import Client, LocalCluster

    from geounet.batch.engine import WorkerSetup

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
    client = Client(cluster)
    client.register_plugin(WorkerSetup(1))
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is not present (see ../shared/data/real)")
    return REAL_DATA


# A "probe" architecture for plumbing tests (as TorchGeo does: swap the network for a 1x1 conv where
# the test is about coordinates, not the model): logit = gain * (band 1 - 0.5), so the
# probability is ~1 exactly where band 1 is bright. Registered once per test session.
def _register_probe() -> None:
    import torch
    from torch import nn

    from geounet.models.base import SegmentationModel
    from geounet.models.registry import _REGISTRY, register

    if "probe" in _REGISTRY:
        return

    @register("probe")
    class Probe(SegmentationModel):
        def __init__(self, spec):  # type: ignore[no-untyped-def]
            super().__init__(spec)
            self.head = nn.Conv2d(spec.in_channels, spec.out_channels, 1)
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.weight[:, 0] = 40.0
                self.head.bias.fill_(-20.0)

        def forward_padded(self, x):  # type: ignore[no-untyped-def]
            return self.head(x)

        def _receptive_field_radius(self) -> int:
            return 0


_register_probe()
