"""Every writer in geounet goes through geounet.atomic: a process killed at the moment a
file would be moved into place leaves only names that ``clean_partials`` recognizes and
removes, and no complete-looking file.

Each case runs in a subprocess whose ``os.replace`` SIGKILLs the process at its first call
(the last instant before a finished file is published), then the folder is inspected.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from geounet.atomic import is_partial
from geounet.batch.workflow import clean_partials

KILL_ON_REPLACE = """
import os, signal
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
"""

CASES = {
    "synthetic scene": """
        from geounet.synth import synthesize_scene
        synthesize_scene(OUT, name="s", width=96, height=80, seed=1)
    """,
    "checkpoint": """
        from geounet import create_model, save_checkpoint
        save_checkpoint(create_model("unet", width=2, depth=2, classes=["building"]), OUT / "m.safetensors")
    """,
    "training state": """
        import torch
        from geounet.train.state import save_state
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.AdamW([p])
        p.grad = torch.ones(3); opt.step()
        save_state(OUT / "last.safetensors", opt, {"epoch": 1})
    """,
    "training log": """
        from geounet.train.report import write_csv
        write_csv(OUT / "log.csv", [{"epoch": 1, "train_loss": 0.5}])
    """,
    "evaluation JSON": """
        from geounet.atomic import write_json
        write_json({"f1": 0.5}, OUT / "evaluation.json", strict=True)
    """,
    "scene outputs": """
        import numpy as np, rasterio
        from affine import Affine
        from distributed import Client, LocalCluster
        from geounet import create_model, save_checkpoint
        from geounet.batch.run import run_scenes
        from geounet.settings import InferenceSettings
        ckpt = OUT.parent / "model.safetensors"
        scene = OUT.parent / "scene.tif"
        img = (np.random.default_rng(0).random((3, 64, 80)) * 255).astype("uint8")
        with rasterio.open(scene, "w", driver="GTiff", width=80, height=64, count=3, dtype="uint8",
                           crs="EPSG:32633", transform=Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)) as d:
            d.write(img)
        save_checkpoint(create_model("unet", width=2, depth=2, classes=["building", "road"],
                                     mode="multilabel"), ckpt)  # written before the kill switch
        import os, signal
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, \\
                Client(c) as client:
            run_scenes([str(scene)], ckpt, OUT, InferenceSettings(tile_size=64), client=client, progress=False)
    """,
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_writer_killed_before_publishing_leaves_only_partial_names(tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    body = textwrap.dedent(CASES[case])
    prelude = "" if case == "scene outputs" else KILL_ON_REPLACE
    code = f"from pathlib import Path\nOUT = Path({str(out)!r})\n{prelude}\n{body}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    left = [p for p in out.rglob("*") if p.is_file()]
    assert left, "the writer wrote nothing before publishing"
    assert all(is_partial(p) for p in left), [p.name for p in left]
    assert clean_partials(out) == len(left)
    assert not [p for p in out.rglob("*") if p.is_file()]
