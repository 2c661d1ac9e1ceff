"""``geounet info``: the model card, as text and JSON, and exit code 2 for bad files."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from geounet import create_model, read_metadata, save_checkpoint
from geounet.checkpoint.card import provenance_summary, shorten
from geounet.cli.info import format_count
from geounet.cli.main import cli

GEOUNET = Path(sys.executable).parent / "geounet"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("unet", in_channels=3, classes=("building", "road"), mode="multilabel", width=4, depth=2)
    path = tmp_path_factory.mktemp("info") / "roofs.safetensors"
    save_checkpoint(
        model.eval(),
        path,
        bands=[3, 2, 1],
        normalization={"kind": "meanstd", "mean": [10, 20, 30], "std": [2, 4, 8]},
        thresholds={"building": 0.4, "road": 0.6},
        provenance={"data": "city-tiles", "epochs": 3},
    )
    return path


def test_text_card(checkpoint: Path) -> None:
    result = CliRunner().invoke(cli, ["info", str(checkpoint)])
    assert result.exit_code == 0, result.output
    meta = read_metadata(checkpoint)
    same_arch = create_model("unet", classes=("building", "road"), mode="multilabel", width=4, depth=2)
    n_params = sum(p.numel() for p in same_arch.parameters())
    out = result.output
    for expected in (
        str(checkpoint),
        meta.hash,
        "unet (width 4, depth 2)",
        f"{format_count(n_params)} ({n_params:,})",
        "3, 2, 1",
        "mean [10, 20, 30], std [2, 4, 8]",
        "building, road",
        "multilabel (independent sigmoids; 2 output channels)",
        "building=0.4, road=0.6",
        f"radius {meta.receptive_field_radius} px",
        f"{meta.tile_size} px / {meta.halo} px",
    ):
        assert expected in out, expected
    lines = out.splitlines()
    at = lines.index("provenance")  # a heading, its facts indented below it
    assert [line.split() for line in lines[at + 1 : at + 3]] == [["epochs", "3"], ["data", "city-tiles"]]


def test_json_card(checkpoint: Path) -> None:
    result = CliRunner().invoke(cli, ["info", "--json", str(checkpoint)])
    assert result.exit_code == 0, result.output
    card = json.loads(result.output)
    meta = read_metadata(checkpoint).to_dict()
    assert {k: card[k] for k in meta} == meta
    assert card["path"] == str(checkpoint) and card["out_channels"] == 2 and card["parameters"] > 0


def test_help_explains_options() -> None:
    result = CliRunner().invoke(cli, ["info", "--help"])
    assert result.exit_code == 0
    assert "--json" in result.output and "JSON object" in result.output and "Exit codes" in result.output


@pytest.mark.parametrize("content", [pickle.dumps({"w": 1}), None])
def test_bad_checkpoint_exits_2(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 2
    assert "bad.pt" in result.stderr
    assert ("pickle" if content else "does not exist") in result.stderr


def test_format_count() -> None:
    assert format_count(31_037_633) == "31.04 M"
    assert format_count(7_549) == "7.55 k"
    assert format_count(2_500_000_000) == "2.50 G"
    assert format_count(12) == "12"


@pytest.mark.skipif(not GEOUNET.exists(), reason="geounet console script not installed in this environment")
def test_real_command(checkpoint: Path) -> None:
    proc = subprocess.run([str(GEOUNET), "info", str(checkpoint)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_metadata(checkpoint).hash in proc.stdout


def training_provenance(scenes: int = 12) -> dict:
    """Provenance as geounet.train writes it: the full settings and every scene's record."""
    return {
        "trainer": "geounet.train",
        "geounet_version": "0.1.0",
        "torch_version": "2.13.0+cpu",
        "config_file": "/data/projects/city/train.yaml",
        "config": {
            "data": {"classes": [{"name": "building", "layer": None}] * 4, "bands": [1, 2, 3]},
            "optim": {"epochs": 20, "lr": 0.003, "schedule": "onecycle"},
            "augment": {"flip": True, "notes": "x" * 2000},
        },
        "data": [
            {
                "image": f"/data/projects/city/imagery/2024/orthophoto_tile_{i:03d}.tif",
                "role": "val" if i % 4 == 0 else "train",
                "size": [1024, 1024],
                "crs": "EPSG:32633",
                "dtype": "uint8",
                "fingerprint": f"{i:016x}",
                "labels": {"building": [f"/data/projects/city/labels/buildings_{i:03d}.gpkg:buildings"]},
                "features": {"building": 1000 + i},
            }
            for i in range(scenes)
        ],
        "bands": [1, 2, 3],
        "seed": 7,
        "git_commit": "0123456789abcdef" * 2 + "+dirty",
        "device": "cpu",
        "precision": "float32",
        "python": "3.11.9",
        "train_area_px": 9_437_184,
        "val_area_px": 3_145_728,
        "val_tiles": 12,
        "epochs": 20,
        "metrics": {
            "epoch": 18,
            "step": 3600,
            "lr": 1e-4,
            "train_loss": 0.21,
            "val_loss": 0.2345678,
            "building_iou": 0.71234,
            "building_f1": 0.8321,
            "building_precision": 0.8,
            "mean_iou": 0.71234,
            "epoch_time_s": 55.0,
        },
        "best_metric": "building_f1",
        "training_time_s": 3725.4,
        "date": "2026-12-01T10:00:00+00:00",
        "resumed_from": None,
        "gsd_m": 0.3,
        "note": "trained on the 2024 flight " + "y" * 300,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = create_model("unet", in_channels=3, classes=("building",), width=4, depth=2)
    path = tmp_path_factory.mktemp("trained") / "best.safetensors"
    save_checkpoint(model.eval(), path, provenance=training_provenance())
    return path


def test_long_provenance_is_a_short_readable_summary(trained: Path) -> None:
    result = CliRunner().invoke(cli, ["info", str(trained)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 120, max(lines, key=len)
    assert len(json.dumps(training_provenance())) > 5000 and len(result.output) < 3000
    prov = {line.split()[0]: line for line in lines[lines.index("provenance") + 1 :] if line.startswith("  ")}
    assert "2026-12-01T10:00:00+00:00" in prov["date"]
    assert "20 (1 h 02 min of training)" in prov["epochs"]
    assert (
        "epoch 18: building_f1 0.8321 (selects the best model), val_loss 0.2346, mean_iou 0.7123" in prov["validation"]
    )
    assert "12 scenes (val 3, train 9)" in prov["sources"]
    out = result.output
    assert "orthophoto_tile_000.tif: val, 1024x1024 px, EPSG:32633, uint8" in out
    assert "buildings_000.gpkg:buildings (1,000 features)" in out
    assert "orthophoto_tile_004.tif" in out and "orthophoto_tile_005.tif" not in out
    assert "… and 7 more (geounet info --json lists them all)" in out
    assert "0.3 m" in prov["pixel"]
    assert "/data/projects/city/train.yaml (all settings: geounet info --json)" in prov["settings"]
    assert "seed 7, device cpu, precision float32" in prov["run"]
    assert "train 9,437,184 px" in prov["areas"]
    assert "commit 0123456789ab+dirty" in prov["software"]
    assert prov["note"].endswith("…") and len(prov["note"]) <= 120
    assert "notes" not in out  # the settings themselves are left to --json


def test_json_keeps_the_full_provenance(trained: Path) -> None:
    result = CliRunner().invoke(cli, ["info", "--json", str(trained)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["provenance"] == training_provenance()


def test_provenance_summary_is_a_pure_function_of_the_record() -> None:
    assert provenance_summary({}) == []
    assert provenance_summary({"epochs": 3, "date": "2024-05-01", "source": "legacy.pth", "loss": [0.5, 0.25]}) == [
        ("date", "2024-05-01"),
        ("epochs", "3"),
        ("source", "legacy.pth"),
        ("loss", "0.5, 0.25"),
    ]
    # a known key holding an unexpected type is shown as it is, not dropped
    assert provenance_summary({"metrics": "see wandb", "data": ["a.tif", "b.tif"]}) == [
        ("metrics", "see wandb"),
        ("data", "a.tif, b.tif"),
    ]
    rows = provenance_summary(training_provenance(scenes=2), width=40)
    assert all(len(text) <= 40 for _, text in rows)
    assert [label for label, _ in rows][:7] == ["date", "epochs", "validation", "sources", "", "", ""]
    assert shorten("a\nb  c", 10) == "a b c" and shorten("abcdefghijkl", 6) == "abcde…"


def test_scenes_and_image_sources_together_are_counted_apart_sources_first() -> None:
    """A run on synthetic scenes beside data.sources: both counted, the sources (with their
    terms) listed before the scenes."""
    scene = {"image": "out/synth/s_train_0000.tif", "role": "train", "size": [64, 64], "crs": "EPSG:32633"}
    source = {"source": "rio", "images": 15, "areas": {"train": ["rio"], "val": []}, "terms": "CC BY-SA 4.0"}
    rows = provenance_summary({"data": [scene, dict(scene, role="val"), source]}, max_sources=2)
    assert rows[0] == ("sources", "1 source, 15 images; 2 scenes (train 1, val 1)")
    assert rows[1][1].startswith("rio: 15 images") and rows[2][1].strip() == "terms CC BY-SA 4.0"
    assert rows[3][1].startswith("out/synth/s_train_0000.tif: train")
    assert rows[-1][1] == "… and 1 more (geounet info --json lists them all)"
