"""The Dask engine: cluster sizing, the model reaching each worker once, several scenes in
flight, and fault tolerance with real worker processes -- a worker SIGKILLed mid-scene, a
scene whose task kills every worker that runs it, and the same job on an external cluster
(``dask scheduler`` + two ``dask worker`` processes on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import geounet.batch.run
import geounet.batch.scheduler
from geounet.batch.engine import LazyClient, plan_cluster
from geounet.batch.workflow import load_workflow, run_workflow
from geounet.settings import WorkflowSettings
from tests.workflow._helpers import (
    DASK,
    SCENE_FILES,
    STEMS,
    Job,
    Reference,
    assert_clean,
    assert_same_outputs,
    assert_same_scene,
    kill_session,
    read_json,
    run,
    wait_for,
)


# --------------------------------------------------------------------------- sizing
@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("workers", [None, 1, 2, 3, 100])
@pytest.mark.parametrize("threads", [None, 1, 2, 7])
def test_cpu_cluster_never_oversubscribes_the_cores(cores: int, workers: int | None, threads: int | None) -> None:
    shape = plan_cluster("cpu", workers, cores=cores, threads_per_worker=threads)
    assert shape.gpus == 0 and shape.workers >= 1 and shape.threads_per_worker >= 1 and shape.torch_threads >= 1
    assert shape.workers * shape.threads_per_worker * shape.torch_threads <= cores
    if workers is not None:
        assert shape.workers == min(workers, cores)


def test_cpu_cluster_defaults() -> None:
    assert plan_cluster("cpu", cores=2) == plan_cluster("cpu", cores=2, gpus=4)  # device cpu ignores GPUs
    s = plan_cluster("cpu", cores=2)
    assert (s.workers, s.threads_per_worker, s.torch_threads) == (1, 2, 1)
    s = plan_cluster("cpu", cores=16)
    assert (s.workers, s.threads_per_worker, s.torch_threads) == (4, 4, 1)
    s = plan_cluster("cpu", 1, cores=8, threads_per_worker=2)  # cores left over go to torch
    assert (s.workers, s.threads_per_worker, s.torch_threads) == (1, 2, 4)


def test_gpu_cluster_has_one_worker_per_gpu() -> None:
    s = plan_cluster("auto", cores=16, gpus=2)
    assert (s.workers, s.gpus, s.threads_per_worker, s.torch_threads) == (2, 2, 8, 1)
    assert plan_cluster("cuda", 1, cores=16, gpus=4).workers == 1


def test_lazy_client_starts_nothing_until_used() -> None:
    calls = []
    lazy = LazyClient(lambda: calls.append(1) or "client", on_connect=calls.append)  # type: ignore[arg-type,return-value]
    assert not lazy.started and calls == []
    assert lazy.upper() == "CLIENT"  # forwarded to the real client, connected on first use
    assert lazy.started and calls == [1, "client"]
    lazy.upper()
    assert calls == [1, "client"]


# --------------------------------------------------------------------------- embedded cluster
@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """The engine's own embedded cluster: two worker processes with one thread each."""
    from geounet.batch.engine import dask_client

    with dask_client(device="cpu", workers=2, threads_per_worker=1, dashboard=False) as client:
        yield client


def _dask_settings() -> dict:
    import dask

    from geounet.batch.engine import QUIET_DASK

    return {k: dask.config.get(k) for k in QUIET_DASK}


def test_embedded_workers_poll_less_often_than_dask_defaults(cluster) -> None:
    from geounet.batch.engine import QUIET_DASK

    seen = cluster.run(_dask_settings)
    assert len(seen) == 2
    assert all(v == QUIET_DASK for v in seen.values()), seen
    assert QUIET_DASK["distributed.admin.tick.interval"] == "200ms"


def _malloc_env() -> dict:
    import os

    return {k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_")}


def test_embedded_workers_start_with_one_malloc_arena_and_no_mmap(cluster) -> None:
    seen = cluster.run(_malloc_env)
    assert len(seen) == 2
    assert all(v == {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0"} for v in seen.values()), seen


def _heartbeat_records_kept() -> list[bool]:
    import logging

    logger = logging.getLogger("distributed.worker")

    def kept(msg: str) -> bool:
        return bool(logger.filter(logger.makeRecord(logger.name, logging.ERROR, __file__, 1, msg, (), None)))

    return [
        kept("Failed to communicate with scheduler during heartbeat."),
        kept("Unexpected exception during heartbeat."),
    ]


def test_embedded_workers_drop_only_the_heartbeat_their_closing_scheduler_misses(cluster) -> None:
    seen = cluster.run(_heartbeat_records_kept)
    assert len(seen) == 2
    assert all(v == [False, True] for v in seen.values()), seen
    # not in this (the client's) process, where an external cluster's messages pass through
    assert _heartbeat_records_kept() == [True, True]


def test_quiet_dask_config_keeps_what_the_user_set() -> None:
    import dask

    from geounet.batch.engine import QUIET_DASK, quiet_dask_config

    assert quiet_dask_config() == QUIET_DASK  # nothing configured: all of them apply
    with dask.config.set({"distributed.admin.tick.interval": "5ms"}):  # the user's own value
        q = quiet_dask_config()
    assert "distributed.admin.tick.interval" not in q
    assert q == {k: v for k, v in QUIET_DASK.items() if k != "distributed.admin.tick.interval"}


def _settings(job: Job, out: Path) -> WorkflowSettings:
    """The reference run's workflow, writing to ``out``."""
    return load_workflow(job.workflow, {"out": str(out)})


def _count_model_loads() -> None:
    """On a worker: count calls of the checkpoint loader (get_model imports it per call)."""
    import geounet.checkpoint
    import geounet.infer.model_cache

    geounet.infer.model_cache._MODELS.clear()
    real = getattr(geounet.checkpoint.load_checkpoint, "__wrapped__", geounet.checkpoint.load_checkpoint)

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        counting.calls += 1  # type: ignore[attr-defined]
        return real(*a, **k)

    counting.calls = 0  # type: ignore[attr-defined]
    counting.__wrapped__ = real  # type: ignore[attr-defined]
    geounet.checkpoint.load_checkpoint = counting


def _model_loads() -> tuple[int, list]:
    import geounet.checkpoint
    import geounet.infer.model_cache

    return getattr(geounet.checkpoint.load_checkpoint, "calls", -1), list(geounet.infer.model_cache._MODELS)


@pytest.mark.timeout(240)
def test_model_reaches_each_worker_once_and_scenes_overlap(
    cluster, job: Job, reference: Reference, tmp_path: Path
) -> None:
    from distributed import get_task_stream

    client = cluster
    client.run(_count_model_loads)
    out = tmp_path / "out"
    with get_task_stream(client) as ts:
        outcomes, record = run_workflow(_settings(job, out), base=job.root, client=client, progress=False)
    assert [o.status for o in outcomes] == ["success"] * 3, [o.error for o in outcomes]
    blocks = [t for t in ts.data if str(t["key"]).startswith("block-")]
    assert len(blocks) == sum(o.blocks for o in outcomes) == 12

    # the checkpoint reached each worker once: one load, one cached model, many tasks
    loads = client.run(_model_loads)
    per_worker = {w: sum(t["worker"] == w for t in blocks) for w in loads}
    assert all(n >= 2 for n in per_worker.values()), per_worker
    for w, (calls, cached) in loads.items():
        assert calls == 1 and len(cached) == 1, (w, calls, cached)
    # ... started on every worker by one task of its own, before any block ran there
    warm = [t for t in ts.data if str(t["key"]).startswith("load-model-")]
    assert sorted(t["worker"] for t in warm) == sorted(loads), warm
    for t in warm:
        first_block = min(b["startstops"][0]["start"] for b in blocks if b["worker"] == t["worker"])
        assert t["startstops"][0]["start"] <= first_block

    # several scenes in flight: each scene's first block started before the previous
    # scene was finalized (its scene.json written)
    def first_start(stem: str) -> float:
        return min(t["startstops"][0]["start"] for t in blocks if str(t["key"]).startswith(f"block-{stem}-"))

    for prev, nxt in zip(STEMS, STEMS[1:]):
        done = (out / prev / "scene.json").stat().st_mtime
        assert first_start(nxt) < done, (prev, nxt, first_start(nxt), done)
    # two worker processes x one thread give the same outputs as one worker x two threads
    assert_same_outputs(out, reference.out)


def _block_progress(dask_scheduler, prefix: str) -> tuple[int, list[str]]:  # type: ignore[no-untyped-def]
    """On the scheduler: finished blocks with ``prefix`` and the workers processing one."""
    done = sum(1 for k, ts in dask_scheduler.tasks.items() if str(k).startswith(prefix) and ts.state == "memory")
    busy = [
        ws.address
        for ws in dask_scheduler.workers.values()
        if any(str(t.key).startswith(prefix) for t in ws.processing)
    ]
    return done, busy


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_killed_mid_scene_is_replaced_and_outputs_are_unchanged(
    cluster, job: Job, reference: Reference, tmp_path: Path
) -> None:
    client = cluster
    client.wait_for_workers(2, timeout=120)
    pids = client.run(os.getpid)
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # SIGKILL a worker busy with scene "a" once two of its blocks are done
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline:
            done, busy = client.run_on_scheduler(_block_progress, prefix="block-a-")
            if done >= 2 and busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(pids[busy[0]])
                return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = tmp_path / "out"
    try:
        outcomes, record = run_workflow(_settings(job, out), base=job.root, client=client, progress=False)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert killed, "no worker was killed: the scene finished before two of its blocks were seen"
    assert [o.status for o in outcomes] == ["success"] * 3, [o.error for o in outcomes]
    assert_same_outputs(out, reference.out)
    assert_clean(out)
    client.wait_for_workers(2, timeout=120)  # the nanny replaced the dead worker
    wait_for(
        lambda: len(client.run(os.getpid)) == 2 and killed[0] not in client.run(os.getpid).values(),
        60,
        "the killed worker to be replaced",
        interval=0.2,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_scene_that_kills_its_worker_fails_alone(
    cluster, job: Job, reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real crash: the task of one scene SIGKILLs the worker process running it, on every
    attempt. The wrapper reaches the worker processes through cloudpickle (a closure is
    pickled by value); it never runs in this process.

    Attempt 1 kills one worker; the retry runs on the other, the only one still holding the
    scattered checkpoint, and kills it too, so the scheduler cancels the block ("lost
    dependencies") before ``allowed-failures`` is reached. The pipeline then scatters the
    checkpoint again and resubmits the block once; its second round ends the same way and
    the scene fails with a message saying a worker died. The other scenes complete."""
    client = cluster
    client.wait_for_workers(2, timeout=120)
    real = geounet.batch.scheduler.process_block
    here = os.getpid()

    def crashing(scene, block, checkpoint, spec):  # type: ignore[no-untyped-def]
        if scene.stem == "sub1_b" and os.getpid() != here:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(scene, block, checkpoint, spec)

    monkeypatch.setattr(geounet.batch.scheduler, "process_block", crashing)
    wf = _settings(job, tmp_path / "out")
    scenes = [str(job.scenes / f) for f in SCENE_FILES]
    # one block in flight at a time: the other scenes' blocks never sit on a worker that
    # the crashing task kills (they would be counted as suspects too)
    outcomes = geounet.batch.run.run_scenes(
        scenes, job.model, tmp_path / "out", wf.inference, client=client, progress=False, max_in_flight=1
    )
    by = {o.stem: o for o in outcomes}
    assert set(by) == set(STEMS), [(o.stem, o.status, o.error) for o in outcomes]
    error = by["sub1_b"].error or ""
    assert by["sub1_b"].status == "failed"
    assert f"scene {job.scenes / 'sub1/b.tif'}: a worker died while processing block 0" in error, error
    assert by["a"].status == by["sub2_b"].status == "success"
    for stem in ("a", "sub2_b"):
        assert_same_scene(tmp_path / "out" / stem, reference.out / stem)
    assert not (tmp_path / "out" / "sub1_b").exists() or not any((tmp_path / "out" / "sub1_b").iterdir())


# --------------------------------------------------------------------------- external cluster
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_same_job_on_an_external_cluster_gives_the_same_outputs(job: Job, reference: Reference, tmp_path: Path) -> None:
    from distributed import Client

    sched_file = tmp_path / "scheduler.json"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def spawn(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [str(DASK), *args], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    try:
        spawn(
            "scheduler",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(sched_file),
        )
        wait_for(
            lambda: sched_file.exists() and "address" in sched_file.read_text(),
            120,
            "the scheduler to start",
            interval=0.1,
        )
        address = read_json(sched_file)["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(2):
            spawn(
                f"worker{i}",
                "worker",
                "--scheduler-file",
                str(sched_file),
                "--host",
                "127.0.0.1",
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--no-dashboard",
                "--name",
                f"w{i}",
            )
        with Client(address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=120)
        out = tmp_path / "out"
        rc, stdout, stderr = run(job, "--out", str(out), "--scheduler", address, "--no-progress")
        assert rc == 0, stderr[-3000:] + "".join(p.read_text()[-2000:] for p in logs.iterdir())
        log_text = (out / "geounet.log").read_text()
        assert f"connected to Dask scheduler {address} with 2 worker(s)" in log_text
        assert "Dask dashboard: not served by this scheduler" in log_text  # started --no-dashboard
        assert "starting embedded" not in log_text
        assert_same_outputs(out, reference.out)
        assert_clean(out)
        with Client(address, timeout="60s") as c:  # the external cluster is left running
            assert len(c.scheduler_info()["workers"]) == 2
    finally:
        for p in reversed(procs):  # workers first, then the scheduler: SIGTERM, then SIGKILL
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_session(p)  # type: ignore[arg-type]
                p.wait(timeout=10)
