"""Training end to end on a tiny generated scene: logs, checkpoints, normalization, resume, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
import yaml
from affine import Affine
from click.testing import CliRunner

from geounet.checkpoint import load_checkpoint, read_metadata
from geounet.errors import CheckpointError, ConfigError
from geounet.train import load_training_settings, train
from geounet.train.config import OptimSettings
from geounet.train.data import TrainScene, estimate_normalization, load_window, open_scenes
from geounet.train.inputs import open_data, split_areas
from geounet.train.optim import lr_at
from geounet.train.sampling import WindowRef
from geounet.train.state import optimizer_state, restore_optimizer, state_paths
from tests.conftest import write_tif

T = Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)
H, W = 64, 128


def _box(r0: float, c0: float, r1: float, c1: float) -> shapely.Polygon:
    (x0, y0), (x1, y1) = T @ (c0, r0), T @ (c1, r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def make_scene(folder: Path, dtype: str = "uint8", nodata: float | None = None) -> tuple[Path, Path]:
    """A 128 x 64 px scene: bright roofs on a dark field, a gray road; labels in EPSG:4326 and a misnamed layer."""
    rng = np.random.default_rng(0)
    img = (40 + rng.normal(0, 6, (3, H, W))).clip(0, 255)
    houses = [
        (6, 6, 14, 16),
        (6, 16, 14, 24),
        (30, 40, 40, 52),
        (44, 70, 56, 80),
        (8, 90, 18, 104),
        (40, 100, 50, 110),
        (46, 8, 58, 20),
    ]
    for r0, c0, r1, c1 in houses:
        img[:, r0:r1, c0:c1] = np.array([200, 120, 90])[:, None, None]
    img[:, 22:28, :] = 130  # road, 6 px = 3 m wide, centre on the row-25 edge
    if dtype == "uint16":
        img = img * 16  # 12-bit like
    data = img.astype(dtype)
    if nodata is not None:
        data[:, 60:, 100:] = nodata
    image = write_tif(folder / "scene.tif", data, transform=T, nodata=nodata)
    labels = folder / "labels.gpkg"
    b = gpd.GeoSeries([_box(*h) for h in houses], crs="EPSG:32633").to_crs("EPSG:4326")
    gpd.GeoDataFrame({"kind": ["Building"] * len(houses)}, geometry=b).to_file(labels, layer="misnamed_layer")
    y = (T @ (0, 25))[1]
    road = gpd.GeoSeries([shapely.LineString([(500000.0, y), (500064.0, y)])], crs="EPSG:32633").to_crs("EPSG:4326")
    gpd.GeoDataFrame({"width_m": [3.0]}, geometry=road).to_file(folder / "roads.geojson")
    return image, labels


def write_config(folder: Path, out: Path, **sections) -> Path:
    image, labels = make_scene(folder, **sections.pop("scene", {}))
    cfg = {
        "data": {
            "classes": [
                {"name": "building", "separate_touching": True},
                {"name": "road", "width_field": "width_m"},
            ],
            "scenes": [
                {"image": str(image), "labels": {"building": str(labels), "road": str(folder / "roads.geojson")}}
            ],
        },
        "sampling": {"window": 32, "windows_per_epoch": 16, "batch_size": 4, "balance": 0.5},
        "split": {"kind": "strip", "val_fraction": 0.25},
        "model": {"width": 4, "depth": 2},
        "optim": {"epochs": 2, "lr": 0.01, "warmup": 0.0, "schedule": "constant"},
        "normalization": {"sample_windows": 8},
        "validation": {"tile": 32},
        "compute": {"threads": 1, "precision": "fp32", "seed": 3, "prefetch": True},
        "output": {"dir": str(out)},
    }
    for key, value in sections.items():
        cfg[key].update(value)
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    config = write_config(folder, folder / "run")
    settings = load_training_settings(config)
    result = train(settings, progress=False)
    return folder, config, settings, result


def test_training_decreases_loss_and_writes_outputs(two_epochs):
    folder, _, settings, result = two_epochs
    out = folder / "run"
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    for name in (
        "best.safetensors",
        "last.safetensors",
        "log.csv",
        "curves.png",
        "last.state.json",
        "last.state.safetensors",
    ):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "log.csv").read_text().splitlines()
    assert len(lines) == 3
    for col in ("epoch", "train_loss", "val_loss", "building_iou", "road_iou", "building_f1", "score"):
        assert col in lines[0].split(",")
    assert result.best_checkpoint == out / "best.safetensors"
    assert 1 <= result.best_epoch <= 2


def test_checkpoint_records_normalization_and_provenance(two_epochs):
    folder, _, settings, result = two_epochs
    model = load_checkpoint(result.best_checkpoint)
    meta = read_metadata(result.best_checkpoint)
    assert list(model.spec.classes) == ["building", "road"] and model.spec.mode == "multilabel"
    assert meta.bands == [1, 2, 3]
    # the statistics equal those computed from the sampled training windows
    scenes = open_scenes(settings)
    train_rects, _ = split_areas(scenes, settings)
    expected = estimate_normalization(scenes, train_rects, [1, 2, 3], settings.normalization, 32, seed=3)
    assert meta.normalization.kind == "meanstd"
    np.testing.assert_allclose(meta.normalization.mean, expected.mean)
    np.testing.assert_allclose(meta.normalization.std, expected.std)
    assert 30 < meta.normalization.mean[0] < 120  # windows only from the training strip, not constant
    prov = meta.provenance
    assert prov["seed"] == 3 and prov["epochs"] == result.best_epoch
    assert prov["data"][0]["image"].endswith("scene.tif")
    assert prov["config"]["model"]["width"] == 4
    assert prov["training_time_s"] > 0 and "building_f1" in prov["metrics"]
    assert "git_commit" in prov
    assert meta.thresholds == {"building": 0.5, "road": 0.5}


def test_resume_continues_from_the_stored_epoch(tmp_path, two_epochs):
    _, config, _, full = two_epochs
    out = tmp_path / "resumed"
    runner = CliRunner()
    from geounet.cli.train import command

    res = runner.invoke(command, [str(config), "--epochs", "1", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    state = json.loads(state_paths(out / "last.safetensors")[0].read_text())
    assert state["epoch"] == 1 and state["step"] == 4
    seen = []
    settings = load_training_settings(config, {"output.dir": str(out)})
    result = train(
        settings, resume=out / "last.safetensors", progress=False, on_epoch=lambda r: seen.append(r["epoch"])
    )
    assert seen == [2]
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert json.loads(state_paths(out / "last.safetensors")[0].read_text())["step"] == 8
    # the same windows, weights and optimizer state: the resumed epoch matches the uninterrupted run
    assert math.isclose(result.history[1]["train_loss"], full.history[1]["train_loss"], rel_tol=1e-3)
    assert len((out / "log.csv").read_text().splitlines()) == 3


def test_resume_needs_the_state_sidecar(tmp_path, two_epochs):
    folder, config, _, result = two_epochs
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(result.best_checkpoint.read_bytes())
    settings = load_training_settings(config, {"output.dir": str(tmp_path / "x")})
    with pytest.raises(CheckpointError, match="training state"):
        train(settings, resume=lone, progress=False)


def _weights(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k[len(prefix) :]: v for k, v in load_file(path).items() if k.startswith(prefix)}


def test_weight_average_is_validated_saved_as_best_and_resumed(tmp_path):
    """optim.ema: best.safetensors holds the average, last.safetensors the trained weights, and a
    resumed run continues the average as if it had not stopped."""
    config = write_config(tmp_path, tmp_path / "full", optim={"ema": 0.7})
    settings = load_training_settings(config)
    full = train(settings, progress=False)
    out = tmp_path / "full"
    average = _weights(state_paths(out / "last.safetensors")[1], "ema.")
    last = _weights(out / "last.safetensors")
    shared = [k for k in last if k in average and last[k].is_floating_point()]
    assert len(shared) > 10
    assert any(not torch.equal(last[k], average[k]) for k in shared)  # the average is not the last step's weights
    if full.best_epoch == 2:  # best is the average of its epoch
        best = _weights(out / "best.safetensors")
        assert all(torch.equal(best[k], average[k]) for k in shared)
    # stopped after one epoch and resumed: the same average at the end
    part = tmp_path / "part"
    one = load_training_settings(config, {"output.dir": str(part), "optim.epochs": 1})
    first = train(one, progress=False)
    best1 = _weights(part / "best.safetensors")
    mid = _weights(state_paths(part / "last.safetensors")[1], "ema.")
    assert first.best_epoch == 1 and all(torch.equal(best1[k], mid[k]) for k in shared)
    train(load_training_settings(config, {"output.dir": str(part)}), resume=part / "last.safetensors", progress=False)
    resumed = _weights(state_paths(part / "last.safetensors")[1], "ema.")
    for k in shared:
        torch.testing.assert_close(resumed[k], average[k], rtol=1e-4, atol=1e-5)


def test_existing_run_is_not_overwritten(two_epochs):
    _, config, _, _ = two_epochs
    with pytest.raises(ConfigError, match="earlier run.*--overwrite"):
        train(load_training_settings(config), progress=False)


def test_multiclass_uint16_with_nodata(tmp_path):
    config = write_config(
        tmp_path,
        tmp_path / "mc",
        scene={"dtype": "uint16", "nodata": 0},
        model={"mode": "multiclass"},
        optim={"epochs": 1},
        sampling={"windows_per_epoch": 8, "batch_size": 4},
    )
    settings = load_training_settings(config)
    scenes = open_scenes(settings)
    assert scenes[0].has_mask
    raw, valid = scenes[0].read(WindowRef(0, 32, 96, 32, 32), [1, 2, 3])
    assert not valid[28:, 4:].any() and valid[:28].all()
    result = train(settings, progress=False)
    meta = read_metadata(result.best_checkpoint)
    assert meta.normalization.kind == "percentile"  # 16-bit scene
    assert meta.spec.mode == "multiclass"
    assert math.isfinite(result.history[0]["val_loss"])


def test_nodata_pixels_are_zero_after_normalization(tmp_path):
    config = write_config(tmp_path, tmp_path / "nd", scene={"nodata": 0})
    settings = load_training_settings(config)
    scene: TrainScene = open_scenes(settings)[0]
    from geounet.scene.normalize import MeanStd

    x, y, w = load_window(scene, WindowRef(0, 32, 96, 32, 32), [1, 2, 3], MeanStd(mean=[40] * 3, std=[10] * 3))
    v = w > 0  # loss weights: 0 on nodata
    assert not v[28:, 4:].any() and v[:28].all()
    assert (x[:, ~v] == 0).all() and (x[:, v] != 0).any()


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"sampling": {"window": -5}}, r"sampling\.window' = -5"),
        ({"sampling": {"windw": 64}}, r"unknown key 'sampling\.windw'"),
        ({"split": {"gap": 8}}, r"split\.gap = 8 px is smaller than sampling\.window = 32"),
        ({"model": {"mode": "multi"}}, r"model\.mode' = 'multi'"),
        ({"optim": {"schedule": "linear"}}, r"optim\.schedule' = 'linear'"),
    ],
)
def test_config_errors_name_file_key_and_value(tmp_path, patch, expected):
    config = write_config(tmp_path, tmp_path / "out")
    data = yaml.safe_load(config.read_text())
    for section, values in patch.items():
        data[section].update(values)
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=expected) as err:
        load_training_settings(config)
    assert str(config) in str(err.value)


def test_data_errors_name_the_file_and_layer(tmp_path):
    config = write_config(tmp_path, tmp_path / "out")
    data = yaml.safe_load(config.read_text())
    data["data"]["classes"][0]["layer"] = "buildings"
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"labels.gpkg.*layer 'buildings'.*misnamed_layer"):
        open_scenes(load_training_settings(config))
    data["data"]["classes"][0].update(layer=None, field="kind", value="House")
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="class 'building' selects no feature"):
        open_data(load_training_settings(config))


def test_cli_help_lists_options_with_defaults():
    from geounet.cli.train import command

    res = CliRunner().invoke(command, ["--help"])
    assert res.exit_code == 0
    for flag in (
        "--epochs",
        "--out",
        "--resume",
        "--device",
        "--precision",
        "--threads",
        "--seed",
        "--batch-size",
        "--windows-per-epoch",
        "--window",
        "--lr",
        "--export",
        "--overwrite",
        "--progress",
    ):
        assert flag in res.output
    assert "Default" in res.output and "pixels" in res.output


TRAINING_WORKFLOWS = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "workflows").glob("*.yaml") if p.name != "segment-scenes.yaml"
)


@pytest.mark.parametrize("path", TRAINING_WORKFLOWS, ids=lambda p: p.name)
def test_shipped_training_workflows_validate(path: Path) -> None:
    """Every recipe in workflows/ (the default model's among them) is a valid training config,
    its classes named and its output folder under out/."""
    settings = load_training_settings(path)
    assert [c.name for c in settings.data.classes]
    assert settings.output.dir.startswith("out/")
    assert settings.data.gsd_m is None or settings.data.gsd_m > 0


def test_lr_schedules():
    cfg = OptimSettings(lr=1.0, schedule="onecycle", warmup=0.2)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert math.isclose(lrs[0], 1 / 25) and math.isclose(max(lrs), 1.0) and lrs.index(max(lrs)) == 20
    assert lrs[-1] < 1e-3 and all(a >= b for a, b in zip(lrs[20:], lrs[21:]))
    cos = [lr_at(s, 10, OptimSettings(lr=1.0, schedule="cosine", warmup=0.2)) for s in range(10)]
    assert cos[:2] == [0.5, 1.0] and cos[-1] == 0.0
    assert lr_at(5, 10, OptimSettings(lr=0.1, schedule="constant")) == 0.1


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_state(opt)
    json.dumps(meta)  # plain JSON, nothing pickled
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    restore_optimizer(opt2, tensors, json.loads(json.dumps(meta)))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for key in a["state"][k]:
            assert torch.equal(torch.as_tensor(a["state"][k][key]), torch.as_tensor(b["state"][k][key]))


def test_default_weights_missing_is_a_clear_error(monkeypatch):
    import geounet.weights as weights

    monkeypatch.setattr(weights, "DEFAULT_NAME", "not-there.safetensors")
    with pytest.raises(CheckpointError, match="train-real-mosaic.yaml"):
        weights.default_weights()
    monkeypatch.setattr(weights, "SYNTHETIC_NAME", "not-there.safetensors")
    with pytest.raises(CheckpointError, match="train-synthetic.yaml"):
        weights.synthetic_weights()


def test_shipped_synthetic_weights_load():
    from geounet.weights import synthetic_weights

    meta = read_metadata(synthetic_weights())
    assert list(meta.spec.classes) == ["building", "road"] and meta.spec.mode == "multilabel"
    assert synthetic_weights().stat().st_size < 10_000_000
    assert meta.provenance["config"]["data"]["synthetic"]["train"]["n"] >= 1


def test_shipped_default_weights_are_trained_on_real_sources_with_their_terms():
    from geounet.weights import default_weights

    path = default_weights()
    meta = read_metadata(path)
    assert list(meta.spec.classes) == ["building", "road"] and meta.spec.mode == "multilabel"
    assert meta.gsd_m == 0.5
    assert path.stat().st_size < 5_000_000  # float16 storage
    sources = {d["source"]: d for d in meta.provenance["data"] if "source" in d}
    assert {"spacenet-rio", "dubai", "inria-chicago"} <= set(sources)
    assert all(d["terms"] and d["attribution"] for d in sources.values())
    model = load_checkpoint(path)
    assert next(model.parameters()).dtype == torch.float32  # stored as float16, loaded as float32


# -- model.init: fine-tuning from a checkpoint's weights ----------------------------------------


def _init_config(folder: Path, init: Path, *, classes: list[str] | None = None, **model) -> Path:
    """The tiny config of this module with ``model.init``; ``classes`` drops the others' labels."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(folder, folder / "ft", model={"init": str(init), **model}, optim={"epochs": 1})
    if classes is not None:
        cfg = yaml.safe_load(path.read_text())
        cfg["data"]["classes"] = [c for c in cfg["data"]["classes"] if c["name"] in classes]
        for scene in cfg["data"]["scenes"]:
            scene["labels"] = {k: v for k, v in scene["labels"].items() if k in classes}
        if len(classes) == 1:
            cfg["model"]["mode"] = "binary"
        path.write_text(yaml.safe_dump(cfg))
    return path


def test_model_init_copies_every_tensor_and_keeps_the_normalization(tmp_path, two_epochs):
    from geounet.train.warmstart import warm_start

    _, _, _, earlier = two_epochs
    ckpt = earlier.best_checkpoint
    settings = load_training_settings(_init_config(tmp_path, ckpt))
    start = warm_start(settings, [1, 2, 3])
    assert start is not None and start.fresh == []
    theirs = load_checkpoint(ckpt).state_dict()
    ours = start.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
    assert start.normalization == read_metadata(ckpt).normalization
    # a run started from it records where its weights came from and keeps the statistics
    result = train(settings, progress=False)
    meta = read_metadata(result.best_checkpoint)
    assert meta.normalization == read_metadata(ckpt).normalization
    prov = meta.provenance["initialized_from"]
    assert prov == {"model": str(ckpt), "checkpoint": str(ckpt), "hash": read_metadata(ckpt).hash, "fresh": []}
    # resuming that run keeps the record (not model.init again: the resumed weights win)
    more = load_training_settings(settings.source, {"optim.epochs": 2})
    resumed = train(more, resume=result.last_checkpoint, progress=False)
    assert read_metadata(resumed.last_checkpoint).provenance["initialized_from"] == prov


def test_model_init_with_other_classes_starts_a_new_head(tmp_path, two_epochs):
    from geounet.train.warmstart import warm_start

    ckpt = two_epochs[3].best_checkpoint
    settings = load_training_settings(_init_config(tmp_path, ckpt, classes=["building"]))
    start = warm_start(settings, [1, 2, 3])
    assert start is not None and sorted(start.fresh) == ["head.bias", "head.weight"]
    assert start.model.spec.classes == ("building",) and start.model.spec.mode == "binary"
    assert start.model.state_dict()["head.weight"].shape[0] == 1
    theirs = load_checkpoint(ckpt).state_dict()
    for key, tensor in start.model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(tensor, theirs[key]), key
    assert start.provenance["fresh"] == start.fresh


def test_model_init_takes_the_architecture_and_refuses_a_clash(tmp_path, two_epochs):
    from geounet.train.warmstart import warm_start

    ckpt = two_epochs[3].best_checkpoint
    path = _init_config(tmp_path, ckpt)
    cfg = yaml.safe_load(path.read_text())
    del cfg["model"]["width"], cfg["model"]["depth"]  # not given: taken from the checkpoint (width 4)
    path.write_text(yaml.safe_dump(cfg))
    start = warm_start(load_training_settings(path), [1, 2, 3])
    assert start is not None and start.model.spec.width == 4 and start.model.spec.depth == 2
    # the run records the architecture it trained, not the config's defaults (width 16, depth 4)
    result = train(load_training_settings(path), progress=False)
    model_section = read_metadata(result.best_checkpoint).provenance["config"]["model"]
    assert (model_section["width"], model_section["depth"]) == (4, 2)
    clash = load_training_settings(_init_config(tmp_path / "b", ckpt, depth=3))
    with pytest.raises(ConfigError, match=r"model.depth is 3 but the checkpoint's is 2.*leave those keys out"):
        warm_start(clash, [1, 2, 3])
    with pytest.raises(ConfigError, match=r"takes 3 input bands, the config reads 2 \(bands \[1, 2\]\)"):
        warm_start(load_training_settings(path), [1, 2])


def test_model_init_with_a_larger_width_widens_the_unet_without_changing_its_function(tmp_path, two_epochs):
    """``model.width`` above a ``unet`` checkpoint's: the wider model gives the checkpoint's
    logits at the start, its added channels then learn, and the run records the widening."""
    from geounet.checkpoint.card import provenance_summary
    from geounet.train.warmstart import warm_start, with_architecture
    from tests.conftest import make_checkpoint

    ckpt = two_epochs[3].best_checkpoint  # width 4, depth 2
    settings = load_training_settings(_init_config(tmp_path, ckpt, width=8, depth=2))
    source = load_checkpoint(ckpt)
    settings = with_architecture(settings, source.spec)
    start = warm_start(settings, [1, 2, 3])
    assert start is not None and start.model.spec.width == 8 and start.widened_from == 4
    assert start.provenance["widened_from_width"] == 4
    wide = start.model.state_dict()
    assert wide["encoder.stages.0.0.weight"].shape[0] == 8  # twice the first stage's channels
    # the original channels hold the checkpoint's weights, and see nothing of the added ones
    first = source.state_dict()["encoder.stages.1.0.weight"]  # (8, 4, 3, 3) in the checkpoint
    assert torch.equal(wide["encoder.stages.1.0.weight"][:8, :4], first)
    assert not wide["encoder.stages.1.0.weight"][:8, 4:].any()
    assert wide["encoder.stages.1.0.weight"][8:].abs().sum() > 0  # added channels: random weights
    x = torch.rand(2, 3, 32, 32)
    source.eval()
    start.model.eval()
    with torch.no_grad():
        assert torch.allclose(start.model(x), source(x), atol=1e-5)
    # trained, the model moves away from the checkpoint and uses the added channels
    result = train(load_training_settings(_init_config(tmp_path / "run", ckpt, width=8, depth=2)), progress=False)
    trained = load_checkpoint(result.last_checkpoint)
    assert trained.spec.width == 8
    assert trained.state_dict()["encoder.stages.1.0.weight"][:8, 4:].abs().sum() > 0
    meta = read_metadata(result.best_checkpoint)
    assert meta.provenance["initialized_from"]["widened_from_width"] == 4
    assert meta.provenance["config"]["model"]["width"] == 8
    start_record = {**meta.provenance["initialized_from"], "model": "synthetic"}  # a short name: no truncation
    line = dict(provenance_summary({"initialized_from": start_record}))["started from"]
    assert line.endswith("original channels copied, widened from width 4)"), line
    # with other classes the output layer starts afresh; the rest is still the checkpoint's
    other = with_architecture(
        load_training_settings(_init_config(tmp_path / "o", ckpt, classes=["building"], width=8, depth=2)), source.spec
    )
    fresh = warm_start(other, [1, 2, 3])
    assert fresh is not None and fresh.widened_from == 4 and sorted(fresh.fresh) == ["head.bias", "head.weight"]
    assert torch.equal(fresh.model.state_dict()["encoder.stages.1.0.weight"][:8, :4], first)
    # a narrower width, or a wider architecture other than the plain unet, stays an error
    with pytest.raises(ConfigError, match=r"model.width is 2 but the checkpoint's is 4.*widens a plain 'unet'"):
        warm_start(load_training_settings(_init_config(tmp_path / "n", ckpt, width=2)), [1, 2, 3])
    res = make_checkpoint(tmp_path / "res.safetensors", arch="resunet", width=4, depth=2, seed=5)
    res_cfg = _init_config(tmp_path / "r", res, width=8, depth=2)
    cfg = yaml.safe_load(res_cfg.read_text())
    cfg["model"]["arch"] = "resunet"
    res_cfg.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"model.width is 8 but the checkpoint's is 4"):
        warm_start(load_training_settings(res_cfg), [1, 2, 3])


def test_model_init_names_a_shipped_model_or_a_missing_file(tmp_path, two_epochs):
    from geounet.train.warmstart import init_path, warm_start
    from geounet.weights import synthetic_weights

    ckpt = two_epochs[3].best_checkpoint
    settings = load_training_settings(_init_config(tmp_path, ckpt), {"model.init": "synthetic"})
    assert init_path(settings) == synthetic_weights()
    missing = load_training_settings(_init_config(tmp_path / "m", tmp_path / "nope.safetensors"))
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        warm_start(missing, [1, 2, 3])


def test_model_card_shows_the_checkpoint_a_run_started_from(tmp_path, two_epochs):
    from geounet.checkpoint.card import provenance_summary

    ckpt = two_epochs[3].best_checkpoint
    result = train(load_training_settings(_init_config(tmp_path, ckpt)), progress=False)
    rows = dict(provenance_summary(read_metadata(result.best_checkpoint).provenance))
    line = rows["started from"]
    assert line.endswith(f"{ckpt.name} (hash {read_metadata(ckpt).hash[:12]}; all tensors copied)"), line
    fresh = {"model": "default", "checkpoint": str(ckpt), "hash": "ab" * 32, "fresh": ["head.weight", "head.bias"]}
    line = dict(provenance_summary({"initialized_from": fresh}))["started from"]
    assert line == f"default (hash {'ab' * 6}; output layer started afresh)", line


def test_model_init_renews_only_the_last_convolution_of_a_resunet_head(tmp_path, two_epochs):
    from geounet.train.warmstart import warm_start
    from tests.conftest import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "res.safetensors", arch="resunet", width=4, depth=2, seed=5)
    config = _init_config(tmp_path, ckpt, classes=["building"])
    cfg = yaml.safe_load(config.read_text())
    del cfg["model"]["width"], cfg["model"]["depth"]
    config.write_text(yaml.safe_dump(cfg))
    start = warm_start(load_training_settings(config), [1, 2, 3])
    assert start is not None and start.model.spec.arch == "resunet"
    assert sorted(start.fresh) == ["head.2.bias", "head.2.weight"]  # BatchNorm, ReLU, Conv2d
    theirs = load_checkpoint(ckpt).state_dict()
    for key, tensor in start.model.state_dict().items():
        if key not in start.fresh:
            assert torch.equal(tensor, theirs[key]), key  # the head's BatchNorm is kept too
    # the same classes in another output mode also get a new output layer
    other_mode = _init_config(tmp_path / "mc", two_epochs[3].best_checkpoint)
    same = load_training_settings(other_mode, {"model.mode": "multiclass"})
    renewed = warm_start(same, [1, 2, 3])
    assert renewed is not None and sorted(renewed.fresh) == ["head.bias", "head.weight"]
    assert renewed.model.state_dict()["head.weight"].shape[0] == 3  # background + 2 classes


def test_a_bad_model_init_fails_before_the_output_folder_is_touched(tmp_path, two_epochs):
    out = tmp_path / "ft"
    out.mkdir()
    (out / "log.csv").write_text("an earlier run\n")
    config = _init_config(tmp_path, two_epochs[3].best_checkpoint, depth=3)
    settings = load_training_settings(config, {"output.overwrite": True})
    with pytest.raises(ConfigError, match="model.depth is 3"):
        train(settings, progress=False)
    assert (out / "log.csv").read_text() == "an earlier run\n"  # overwrite did not run


def test_validation_splits_touching_buildings_as_inference_does(tmp_path):
    """Two attached roofs with a probability valley between them are two predicted buildings in
    validation (inference's default separation), one region without it."""
    from geounet.settings import SeparateSettings
    from geounet.train.validation import predicted_buildings
    from geounet.vectorize.separate import SeparationParams

    data = open_data(load_training_settings(write_config(tmp_path, tmp_path / "run")))
    ref = WindowRef(0, 0, 0, 48, 64)
    prob = np.zeros((48, 64), dtype=np.float32)
    prob[8:28, 8:28] = 0.95  # 20 x 20 px = 10 m x 10 m
    prob[8:28, 28:48] = 0.9
    prob[8:28, 27:29] = 0.6  # the valley where the roofs meet: above the threshold
    mask = prob >= 0.5
    params = SeparationParams.from_settings(SeparateSettings(), 0.5, 0.5)
    split = predicted_buildings(mask, prob, data.scenes[0], ref, params)
    whole = predicted_buildings(mask, prob, data.scenes[0], ref, None)
    assert len(whole) == 1 and len(split) == 2
    areas = sorted(shapely.area(split))
    assert 85 < areas[0] <= 100 and 85 < areas[1] <= 100  # m2: each roof loses at most the dividing line
    assert abs(sum(areas) - shapely.area(whole[0])) <= 10.0


def test_calibrated_thresholds_are_the_best_on_validation_and_stored(tmp_path, two_epochs):
    _, _, _, earlier = two_epochs
    path = write_config(
        tmp_path,
        tmp_path / "cal",
        model={"init": str(earlier.best_checkpoint)},
        optim={"epochs": 1},
        validation={"calibrate": [0.3, 0.5, 0.7]},
    )
    result = train(load_training_settings(path), progress=False)
    meta = read_metadata(result.best_checkpoint)
    record = meta.provenance["threshold_calibration"]
    assert record["candidates"] == [0.3, 0.5, 0.7]
    assert record["chosen"] == meta.thresholds
    for name, metric in (("building", "object F1"), ("road", "pixel IoU")):
        scores = record["scores"][f"{name} ({metric})"]
        assert len(scores) == 3
        best = max((s, -abs(t - 0.5), t) for s, t in zip(scores, [0.3, 0.5, 0.7]) if s is not None)[2]
        assert meta.thresholds[name] == best
    # the scores at validation.threshold (0.5) are the epoch's own validation scores
    assert record["scores"]["building (object F1)"][1] == pytest.approx(result.metrics["building_f1"], abs=1e-4)
    assert record["scores"]["road (pixel IoU)"][1] == pytest.approx(result.metrics["road_iou"], abs=1e-4)
    # the weights are the best epoch's: rewriting the thresholds leaves the tensors (and hash) alone
    assert meta.hash == read_metadata(result.last_checkpoint).hash
    with pytest.raises(ConfigError, match="between 0 and 1"):
        load_training_settings(path, {"validation.calibrate": [0.5, 1.5]})
