"""Resume never serves stale or incomplete results.

A scene is skipped only when its scene.json records success for the same input, the same
model (its weights and every metadata field that changes outputs) and the same settings
(those that change outputs), and every output it lists is on disk at the size it records.
Settings that change how the work is grouped, not what is computed, resume.

Every case runs the real pipeline in-process (``run_scenes`` on the shared Dask client)
with the probe model on a tiny scene.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import shapely
from shapely.geometry import shape

from geounet.batch.run import run_scenes
from geounet.checkpoint import CheckpointMetadata, read_metadata
from geounet.settings import (
    NOT_HASHED,
    CenterlineSettings,
    InferenceSettings,
    RegularizeSettings,
    SeparateSettings,
)
from tests.conftest import make_checkpoint
from tests.reliability._faults import SCENE_OUTPUTS, assert_complete, bright_rect_scene

SETTINGS = InferenceSettings(tile_size=64, halo=0, tiles_per_block=1)
PROBE = {"arch": "probe", "width": 1, "depth": 4}


@pytest.fixture(scope="module")
def probe_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("probe") / "probe.safetensors", **PROBE)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    # 100 x 80 px: two blocks per side at tile 64, the rectangle across both seams
    return bright_rect_scene(tmp_path / "s.tif", (20, 15, 80, 70), shape=(80, 100))


def _run(scene: Path, ckpt: Path, out: Path, client, settings: InferenceSettings = SETTINGS) -> str:
    res = run_scenes([str(scene)], ckpt, out, settings, client=client, progress=False)
    assert len(res) == 1 and res[0].status in ("success", "skipped"), res[0].error
    return res[0].status


def _record(out: Path) -> dict:
    return json.loads((out / "s" / "scene.json").read_text())


def test_scene_json_lists_every_output_with_its_size(tmp_path: Path, dask_local, probe_ckpt: Path, scene: Path) -> None:
    out = tmp_path / "out"
    assert _run(scene, probe_ckpt, out, dask_local) == "success"
    rec = assert_complete(out / "s")
    names = [n for n in SCENE_OUTPUTS if n != "scene.json"]
    assert rec["outputs"] == {n: (out / "s" / n).stat().st_size for n in names}
    meta = read_metadata(probe_ckpt)
    assert rec["model_hash"] == meta.content_hash and rec["model_fingerprint"] == meta.output_fingerprint
    assert _run(scene, probe_ckpt, out, dask_local) == "skipped"


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-10])


def _grow(p: Path) -> None:
    p.write_bytes(p.read_bytes() + b" ")


def _old_style(p: Path) -> None:
    """scene.json as geounet wrote it before output sizes: a list of names."""
    folder = p.parent
    rec = json.loads((folder / "scene.json").read_text())
    rec["outputs"] = list(rec["outputs"])
    (folder / "scene.json").write_text(json.dumps(rec))


def _no_model_fingerprint(p: Path) -> None:
    folder = p.parent
    rec = json.loads((folder / "scene.json").read_text())
    del rec["model_fingerprint"]
    (folder / "scene.json").write_text(json.dumps(rec))


def _unlisted(p: Path) -> None:
    folder = p.parent
    rec = json.loads((folder / "scene.json").read_text())
    del rec["outputs"][p.name]
    (folder / "scene.json").write_text(json.dumps(rec))


# name -> (file damaged, how, words the log gives as the reason)
DAMAGE = {
    "geojson-truncated": ("buildings.geojson", _truncate, "buildings.geojson is"),
    "probability-missing": ("probability.tif", Path.unlink, "probability.tif is missing"),
    "gpkg-missing": ("polygons.gpkg", Path.unlink, "polygons.gpkg is missing"),
    "quicklook-grown": ("quicklook.png", _grow, "quicklook.png is"),
    "old-scene-json-without-sizes": ("scene.json", _old_style, "records no output sizes"),
    "scene-json-without-model-fingerprint": ("scene.json", _no_model_fingerprint, "the model changed"),
    "an-output-not-listed": ("roads.geojson", _unlisted, "does not list roads.geojson"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_or_old_outputs_are_computed_again(
    tmp_path: Path, dask_local, probe_ckpt: Path, scene: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    name, damage, words = DAMAGE[case]
    out = tmp_path / "out"
    assert _run(scene, probe_ckpt, out, dask_local) == "success"
    want = {n: (out / "s" / n).read_bytes() for n in ("buildings.geojson", "roads.geojson")}
    damage(out / "s" / name)
    with caplog.at_level(logging.INFO, logger="geounet"):
        assert _run(scene, probe_ckpt, out, dask_local) == "success"  # not "skipped"
    assert any("computing it again" in r.getMessage() and words in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    assert_complete(out / "s")
    assert {n: (out / "s" / n).read_bytes() for n in want} == want
    assert _run(scene, probe_ckpt, out, dask_local) == "skipped"  # and now complete again


# settings that only group the work resume; those that change outputs recompute
SAME_OUTPUTS = {
    "batch_size": {"batch_size": 4},
    "tiles_per_block": {"tiles_per_block": 2},
    "max_pixels": {"max_pixels": 10**6},
}
OTHER_OUTPUTS = {
    "threshold": {"thresholds": {"building": 0.3}},
    "precision": {"precision": "fp32"},
    "device": {"device": "cpu"},
    "min_area": {"min_area_m2": 1.0},
    "min_building": {"min_building_m2": 1.0},
    "simplify": {"simplify_m": 0.5},
    "tile_size": {"tile_size": 96},
    "halo": {"halo": 16},
    "formats": {"formats": ["geojson"]},
    "tta": {"tta": True},
    "gsd": {"gsd_m": 0.25},
    "quicklook_size": {"quicklook_size": 64},
    "bands": {"bands": [1, 2, 3]},
    "use_nodata": {"use_nodata": False},
    # for STAC scenes they pick another file or other bands (plain files: recomputed all the same)
    "stac_asset": {"stac_asset": "visual"},
    "centerlines": {"centerlines": CenterlineSettings(min_spur_m=3.0)},
    "regularize": {"regularize": RegularizeSettings(min_iou=0.9)},
    "separate": {"separate": SeparateSettings(seed_threshold=0.9)},
    "stac_bands": {"stac_bands": ["red", "green", "blue"]},
}


def test_not_hashed_are_exactly_the_settings_that_cannot_change_outputs() -> None:
    assert {k for update in SAME_OUTPUTS.values() for k in update} == NOT_HASHED
    others = {k for update in OTHER_OUTPUTS.values() for k in update} | {"fill_holes_m2"}
    assert set(InferenceSettings.model_fields) == NOT_HASHED | others  # a new setting is classified here


@pytest.mark.parametrize("change", list(SAME_OUTPUTS))
def test_settings_that_only_group_the_work_resume(
    tmp_path: Path, dask_local, probe_ckpt: Path, scene: Path, change: str
) -> None:
    out = tmp_path / "out"
    assert _run(scene, probe_ckpt, out, dask_local) == "success"
    changed = SETTINGS.model_copy(update=SAME_OUTPUTS[change])
    assert changed.fingerprint() == SETTINGS.fingerprint()
    assert _run(scene, probe_ckpt, out, dask_local, changed) == "skipped"


@pytest.mark.parametrize("change", ["threshold", "precision", "min_area", "tile_size", "formats"])
def test_settings_that_change_outputs_recompute(
    tmp_path: Path, dask_local, probe_ckpt: Path, scene: Path, change: str
) -> None:
    out = tmp_path / "out"
    assert _run(scene, probe_ckpt, out, dask_local) == "success"
    changed = SETTINGS.model_copy(update=OTHER_OUTPUTS[change])
    assert _run(scene, probe_ckpt, out, dask_local, changed) == "success"
    assert _record(out)["config_hash"] == changed.fingerprint()


def test_every_setting_that_changes_outputs_changes_the_hash() -> None:
    hashes = {SETTINGS.fingerprint()} | {
        SETTINGS.model_copy(update=update).fingerprint() for update in OTHER_OUTPUTS.values()
    }
    hashes.add(SETTINGS.model_copy(update={"fill_holes_m2": 4.0}).fingerprint())
    assert len(hashes) == len(OTHER_OUTPUTS) + 2


def test_grouping_settings_really_give_the_same_polygons(tmp_path: Path, dask_local, probe_ckpt: Path) -> None:
    """What NOT_HASHED claims: other blocks and batches, the same polygons."""
    scene = bright_rect_scene(tmp_path / "s.tif", (20, 15, 150, 70), shape=(130, 170))
    polys = []
    for i, update in enumerate([{}, {"tiles_per_block": 2, "batch_size": 3}, {"tiles_per_block": 3}]):
        out = tmp_path / f"out{i}"
        assert _run(scene, probe_ckpt, out, dask_local, SETTINGS.model_copy(update=update)) == "success"
        features = json.loads((out / "s" / "buildings.geojson").read_text())["features"]
        polys.append(shapely.union_all([shape(f["geometry"]) for f in features]))
    assert polys[0].area > 0
    assert all(p.equals(polys[0]) for p in polys[1:])


# -- the model: weights and every metadata field that changes outputs ---------------------------
def _variant(meta: CheckpointMetadata, **update: object) -> CheckpointMetadata:
    return CheckpointMetadata.model_validate({**meta.to_dict(), **update})


def test_output_fingerprint_covers_every_field_that_changes_outputs(probe_ckpt: Path) -> None:
    meta = read_metadata(probe_ckpt)
    spec = meta.to_dict()["spec"]
    changed = {
        "hash": "0" * 64,
        "thresholds": {"building": 0.4, "road": 0.5},
        "normalization": {"kind": "meanstd", "mean": [1.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]},
        "bands": [3, 2, 1],
        "gsd_m": 0.3,
        "tile_size": meta.tile_size * 2,
        "halo": meta.halo + 16,
        "receptive_field_radius": meta.receptive_field_radius + 1,
        "spec": {**spec, "width": 2},
    }
    prints = {meta.output_fingerprint} | {_variant(meta, **{k: v}).output_fingerprint for k, v in changed.items()}
    classes = _variant(meta, spec={**spec, "classes": ["house", "road"]}, thresholds={"house": 0.5, "road": 0.5})
    prints.add(classes.output_fingerprint)
    assert len(prints) == len(changed) + 2
    # what describes the file, not what it computes, does not count
    same = {"provenance": {"epochs": 99}, "extra": {"note": "x"}, "geounet_version": "9.9.9"}
    assert {_variant(meta, **{k: v}).output_fingerprint for k, v in same.items()} == {meta.output_fingerprint}


@pytest.mark.parametrize(
    ("what", "save_kw"),
    [
        ("threshold", {"thresholds": 0.9}),
        ("normalization", {"normalization": {"kind": "meanstd", "mean": [20.0] * 3, "std": [255.0] * 3}}),
        ("bands", {"bands": [1, 3, 2]}),
        ("gsd", {"gsd_m": 0.25}),
        ("tile suggestion", {"tile_size": 128}),
        ("provenance only", {"provenance": {"note": "re-saved"}}),
    ],
)
def test_same_weights_other_metadata_recomputes(
    tmp_path: Path, dask_local, probe_ckpt: Path, scene: Path, what: str, save_kw: dict
) -> None:
    """Same tensors (same content hash), other metadata: scenes are computed again unless
    only the file's description changed. With the settings' tile size unset, the
    checkpoint's suggestion is what tiles the scene."""
    other = make_checkpoint(tmp_path / "other.safetensors", **PROBE, **save_kw)
    assert read_metadata(other).content_hash == read_metadata(probe_ckpt).content_hash
    out = tmp_path / "out"
    settings = SETTINGS.model_copy(update={"tile_size": None})
    assert _run(scene, probe_ckpt, out, dask_local, settings) == "success"
    status = _run(scene, other, out, dask_local, settings)
    assert status == ("skipped" if what == "provenance only" else "success")
    assert _record(out)["model_fingerprint"] == read_metadata(other).output_fingerprint or status == "skipped"


def test_workers_do_not_reuse_a_model_with_the_same_weights_but_another_mode(
    tmp_path: Path, dask_local, scene: Path
) -> None:
    """The probe's weights do not depend on its classes: a 2-class multilabel model and a
    1-class multiclass model (background + building) have identical tensors. The worker's
    model cache must tell them apart, or the second run gets the first model's two sigmoid
    channels (buildings everywhere the band is bright, and one class too many)."""
    a = make_checkpoint(tmp_path / "a.safetensors", **PROBE, classes=("building", "road"), mode="multilabel")
    b = make_checkpoint(tmp_path / "b.safetensors", **PROBE, classes=("building",), mode="multiclass")
    assert read_metadata(a).content_hash == read_metadata(b).content_hash
    assert _run(scene, a, tmp_path / "out-a", dask_local) == "success"
    res = run_scenes([str(scene)], b, tmp_path / "out-b", SETTINGS, client=dask_local, progress=False)
    assert res[0].status == "success", res[0].error
    # multiclass: softmax of two equal logits, argmax ties go to the background: no building
    assert res[0].polygons == {"building": 0}
