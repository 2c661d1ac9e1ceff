"""Scene discovery (folder, glob, list file, URLs), ``--dry-run``, the shipped workflow file,
and configuration errors (exit code 2 naming the file, the key and the value)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from geounet.batch.workflow import discover_scenes, load_workflow
from geounet.settings import WorkflowSettings
from tests.conftest import REPO, write_tif
from tests.workflow._helpers import GEOUNET, Job, Reference, digest, run

SHIPPED = REPO / "workflows" / "segment-scenes.yaml"


def _touch_tif(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tif(path, np.zeros((3, 16, 16), np.uint8))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for rel in (
        "x.tif",
        "B.TIFF",
        "sub/x.tif",
        "sub/deeper/y.tif",
        ".hidden.tif",
        "sub/.partial-1-z.tif",
        "out/x/probability.tif",
    ):
        _touch_tif(root / rel)
    (root / "notes.txt").write_text("not a scene")
    (root / "folder.tif").mkdir()  # a folder named like a scene is no scene
    return root


def test_folder_is_searched_recursively_for_tif_and_tiff_any_case(tree: Path) -> None:
    got = discover_scenes(str(tree), exclude=tree / "out")
    assert got == sorted(str(tree / r) for r in ("x.tif", "B.TIFF", "sub/x.tif", "sub/deeper/y.tif"))
    assert all(os.path.isabs(p) for p in got)
    flat = discover_scenes(str(tree), recursive=False, exclude=tree / "out")
    assert flat == sorted(str(tree / r) for r in ("x.tif", "B.TIFF"))
    # the output folder's own rasters are not scenes -- unless it is what was asked for
    assert str(tree / "out/x/probability.tif") in discover_scenes(str(tree))
    assert discover_scenes(str(tree / "out"), exclude=tree / "out") == [str(tree / "out/x/probability.tif")]
    assert discover_scenes(str(tree), pattern="y.*") == [str(tree / "sub/deeper/y.tif")]


def _previous_output(folder: Path, **record: object) -> Path:
    """A scene folder as geounet writes it: probability.tif (a GeoTIFF) and scene.json."""
    _touch_tif(folder / "probability.tif")
    rec = {"status": "success", "scene": "/data/x.tif", "stem": folder.name, "input_fingerprint": "f", **record}
    (folder / "scene.json").write_text(json.dumps(rec))
    return folder


def test_folders_holding_geounet_outputs_are_not_searched(tree: Path, tmp_path: Path) -> None:
    """Outputs of earlier runs written inside the scenes folder (to another OUT than this
    run's, so `exclude` does not name them) are no scenes: every file in or below a folder
    holding a geounet scene.json is skipped, in folder and glob searches alike."""
    _previous_output(tree / "old-run" / "x")
    _previous_output(tree / "sub" / "y")  # a scene folder straight inside a scene folder
    (tree / "sub" / "y" / "deeper").mkdir()
    _touch_tif(tree / "sub" / "y" / "deeper" / "z.tif")  # below an output folder: skipped too
    # a scene.json that is not geounet's does not hide the folder's scenes
    _touch_tif(tree / "mine" / "kept.tif")
    (tree / "mine" / "scene.json").write_text('{"name": "my own notes"}')
    want = sorted(str(tree / r) for r in ("x.tif", "B.TIFF", "sub/x.tif", "sub/deeper/y.tif", "mine/kept.tif"))
    assert discover_scenes(str(tree), exclude=tree / "out") == want
    assert discover_scenes(str(tree / "**" / "*.tif"), exclude=tree / "out") == sorted(
        str(tree / r) for r in ("x.tif", "sub/x.tif", "sub/deeper/y.tif", "mine/kept.tif")
    )
    # the searched folder itself holding scene.json: nothing in it is a scene
    assert discover_scenes(str(tree / "sub" / "y")) == []
    # a file named explicitly (or in a list file) is taken as given
    named = str(tree / "old-run" / "x" / "probability.tif")
    assert discover_scenes(named) == [named]


def test_glob_list_file_urls_and_missing_paths(tree: Path, tmp_path: Path) -> None:
    assert discover_scenes(str(tree / "sub" / "**" / "*.tif")) == [
        str(tree / "sub/deeper/y.tif"),
        str(tree / "sub/x.tif"),
    ]
    listing = tree / "sub" / "list.txt"
    listing.write_text(
        "# scenes for tonight\n\nx.tif\ndeeper/y.tif\n/vsis3/bucket/scene.tif\n"
        "https://example.org/c.tif\n../missing.tif\n"
    )
    assert discover_scenes(str(listing)) == [
        str(tree / "sub/x.tif"),
        str(tree / "sub/deeper/y.tif"),
        "/vsis3/bucket/scene.tif",
        "https://example.org/c.tif",
        os.path.abspath(tree / "sub/../missing.tif"),
    ]
    # several sources: order kept, duplicates dropped; a relative source found from `base`
    got = discover_scenes(
        ["/vsicurl/https://example.org/a.tif", "sub/x.tif", str(tree / "x.tif"), str(tree / "sub/x.tif")], base=tree
    )
    assert got == ["/vsicurl/https://example.org/a.tif", str(tree / "sub/x.tif"), str(tree / "x.tif")]
    # relative globs are tried from the current folder, then from `base`
    assert discover_scenes("sub/deeper/*.tif", base=tree) == [str(tree / "sub/deeper/y.tif")]


def test_dry_run_lists_what_would_happen_and_computes_nothing(job: Job, reference: Reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference.out / "a", out / "a")  # complete
    (out / "sub1_b").mkdir()  # started, never finished
    before = digest(out)
    bad = tmp_path / "bad.tif"
    bad.write_text("not a tiff")
    listing = tmp_path / "scenes.txt"
    listing.write_text(
        f"{job.scenes / 'a.tif'}\n{job.scenes / 'sub1/b.tif'}\n{job.scenes / 'sub2/b.tif'}\n"
        "bad.tif\n/vsicurl/http://127.0.0.1:9/remote.tif\n"
    )
    rc, stdout, stderr = run(job, "--out", str(out), "--scenes", str(listing), "--dry-run", timeout=120)
    assert rc == 0, stderr[-3000:]
    lines = dict(ln.split(": ", 1) for ln in stdout.splitlines())
    assert lines["a"].startswith("complete, would skip")
    assert lines["sub1_b"].startswith("would run") and lines["sub2_b"].startswith("would run")
    assert str(job.scenes / "sub1/b.tif") in lines["sub1_b"]  # same stem b, different folders
    assert lines["bad"].startswith("REFUSED") and "GeoTIFF" in lines["bad"]
    assert lines["remote"].startswith("REFUSED") and "/vsicurl/http://127.0.0.1:9/remote.tif" in lines["remote"]
    assert digest(out) == before and sorted(p.name for p in out.iterdir()) == ["a", "sub1_b"]
    assert "Dask" not in stderr
    # --force: complete scenes would run again
    rc, stdout, _ = run(
        job, "--out", str(out), "--scenes", str(job.scenes / "a.tif"), "--dry-run", "--force", timeout=120
    )
    assert rc == 0 and stdout.startswith("a: would run")


def test_cli_paths_are_relative_to_the_current_folder(job: Job, tmp_path: Path) -> None:
    """--out and --scenes given on the command line are taken from the current folder, not
    from the workflow file's folder (paths inside the file are)."""
    r = subprocess.run(
        [str(GEOUNET), "run", str(job.workflow), "--scenes", "scenes/sub1", "--out", "o", "--dry-run"],
        cwd=job.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == f"b: would run ({job.scenes / 'sub1' / 'b.tif'})"
    work = tmp_path / "elsewhere"
    shutil.copytree(job.scenes / "sub2", work / "mine")
    r = subprocess.run(
        [str(GEOUNET), "run", str(job.workflow), "--scenes", "mine", "--dry-run"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == f"b: would run ({work / 'mine' / 'b.tif'})"


def test_shipped_workflow_loads_validates_and_comments_every_key() -> None:
    wf = load_workflow(SHIPPED, {})
    assert isinstance(wf, WorkflowSettings)
    assert wf.model == "default" and wf.recursive is True and wf.cluster.scheduler is None
    assert wf.inference.formats == ["geojson", "gpkg", "probability", "quicklook", "stac"]
    for n, line in enumerate(SHIPPED.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"{SHIPPED}:{n} has no comment: {line!r}"
    # every settings key appears in the file
    text = SHIPPED.read_text()
    for section in (WorkflowSettings, type(wf.inference), type(wf.cluster)):
        for key in section.model_fields:
            if key not in ("use_nodata", "max_pixels", "quicklook_size"):
                assert f"{key}:" in text, key


def test_config_errors_exit_2_naming_file_key_and_value(job: Job, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        job.workflow.read_text()
        .replace("  tile_size: 192\n", "  tile_sise: 192\n")
        .replace("  workers: 1\n", "  workers: two\n")
    )
    r = subprocess.run(
        [str(GEOUNET), "run", str(bad), "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert f"{bad}: unknown key 'inference.tile_sise' (value 192)" in r.stderr
    assert f"{bad}: key 'cluster.workers' = 'two'" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing was done
