"""``geounet demo``: the whole job end to end on built-in defaults.

1. generate a small set of synthetic scenes with exact truth (seeds never used in training);
2. run the batch workflow over them with the shipped weights on the embedded Dask cluster;
3. evaluate the polygons against the truth (building F1@0.5, pixel IoU, road topology);
4. print the metrics and the paths of the GeoJSON files and quicklooks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from geounet.batch.workflow import run_workflow
from geounet.evaluate import EvaluationSettings, evaluate_many, format_table, pair_scenes, write_result_json
from geounet.export.layout import QUICKLOOK_NAME, geojson_name
from geounet.settings import ClusterSettings, InferenceSettings, WorkflowSettings
from geounet.synth import synthesize_scene

log = logging.getLogger(__name__)

# Held-out seeds: training of the shipped weights uses seeds below 9000 (workflows/train-synthetic.yaml).
DEMO_SEED = 9000
DEMO_SCENES: tuple[dict[str, Any], ...] = (
    {"crs": "EPSG:32633"},  # UTM 33N
    {"crs": "EPSG:32733"},  # UTM 33S (southern hemisphere)
    {"crs": "EPSG:4326"},  # geographic: areas are geodesic
)


def make_scenes(folder: Path, size: int, seed: int = DEMO_SEED) -> list[Path]:
    """Synthetic demo scenes (kept if already there with the same name)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, extra in enumerate(DEMO_SCENES):
        name = f"demo_{i:02d}_{extra['crs'].replace(':', '')}"
        tif = folder / f"{name}.tif"
        if not (tif.exists() and (folder / f"{name}_truth.gpkg").exists()):
            synthesize_scene(folder, name=name, width=size, height=size, seed=seed + i, overwrite=True, **extra)
        paths.append(tif)
    return paths


def run_demo(out: Path, *, size: int = 1024, workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``; returns the evaluation result."""
    out = Path(out)
    scenes_dir = out / "scenes"
    run_dir = out / "run"
    print(f"[1/3] synthetic scenes ({len(DEMO_SCENES)} x {size}x{size} px) -> {scenes_dir}")
    make_scenes(scenes_dir, size)
    wf = WorkflowSettings(
        scenes=str(scenes_dir),
        model="synthetic",  # the demo's scenes are synthetic: the model trained on their look
        out=str(run_dir),
        inference=InferenceSettings(min_area_m2=4.0),
        cluster=ClusterSettings(workers=workers),
    )
    print(f"[2/3] batch workflow with the shipped synthetic-trained weights -> {run_dir}")
    outcomes, record = run_workflow(wf, progress=progress)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        for o in failed:
            print(f"FAILED {o.error}")
    print("[3/3] evaluation against the synthetic ground truth")
    pairs, unmatched = pair_scenes(run_dir, scenes_dir, raster=scenes_dir)
    result = evaluate_many(pairs, EvaluationSettings(), unmatched_predictions=unmatched)
    write_result_json(result, out / "evaluation.json", overwrite=True)
    print(format_table(result))
    print("\nOutputs:")
    for o in outcomes:
        folder = Path(o.out_dir)
        for f in (geojson_name("building"), geojson_name("road"), QUICKLOOK_NAME):
            if (folder / f).exists():
                print(f"  {folder / f}")
    print(f"  {run_dir / 'run.json'}\n  {out / 'evaluation.json'}")
    return json.loads(json.dumps(result.to_dict(), default=str))
