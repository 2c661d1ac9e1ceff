"""Many scenes on Dask: engine, block scheduler, scene finalization, workflow runs, demo."""
