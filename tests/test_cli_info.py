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
from geounet.cli.info import format_count
from geounet.cli.main import cli

GEOUNET = Path(sys.executable).parent / "geounet"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("unet", in_channels=3, classes=("building", "road"), mode="multilabel", width=4, depth=2)
    path = tmp_path_factory.mktemp("info") / "roofs.safetensors"
    save_checkpoint(
        model.eval(), path, bands=[3, 2, 1], normalization={"kind": "meanstd", "mean": [10, 20, 30], "std": [2, 4, 8]},
        thresholds={"building": 0.4, "road": 0.6}, provenance={"data": "city-tiles", "epochs": 3},
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
        "data: city-tiles, epochs: 3",
    ):
        assert expected in out, expected


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
