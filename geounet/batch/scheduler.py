"""The client's event loop: blocks of several scenes in flight on Dask, results collected,
scenes finalized on a helper thread.

The client keeps a bounded number of block tasks in flight across *several* scenes, so
workers never wait for one scene's tail; each finished block's probabilities stream into
the scene's probability raster and its polygons are kept until the scene's last block
arrives. A scene is then finalized (:func:`geounet.batch.finalize.finalize_scene`) on a
client-side thread while workers go on with the next scenes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future as LocalFuture
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from distributed import Client, as_completed
from distributed.client import FutureCancelledError
from tqdm.auto import tqdm

from geounet.batch.finalize import SceneJob, finalize_scene
from geounet.batch.outcomes import SceneOutcome
from geounet.checkpoint import CheckpointMetadata
from geounet.errors import GeounetError, OutputError
from geounet.infer.block import BlockTaskSpec, process_block
from geounet.scene.plan import Block, TilingPlan
from geounet.scene.source import SceneInfo
from geounet.scene.stac import StacScene
from geounet.settings import InferenceSettings

log = logging.getLogger(__name__)


def describe_task_error(exc: BaseException, info: SceneInfo, block_index: int) -> str:
    """The message a scene fails with when one of its block tasks raised ``exc``."""
    name = type(exc).__name__
    if name == "KilledWorker":
        return (
            f"scene {info.path}: a worker died while processing block {block_index} on every "
            "allowed attempt (out of memory, or a crash in native code)"
        )
    if isinstance(exc, GeounetError):
        return str(exc)
    return f"scene {info.path}: block {block_index} failed: {name}: {exc}"


def next_batch(ac: as_completed, stop: threading.Event | None) -> list[Any]:
    """Finished futures; returns [] as soon as ``stop`` is set instead of waiting for a
    long block to finish (SIGTERM must not wait for the slowest task in flight)."""
    while not ac.has_ready():
        if stop is not None and stop.wait(0.05):
            return []
        if stop is None:
            return ac.next_batch(block=True)
    return ac.next_batch(block=False)


class BlockScheduler:
    """Runs the blocks of many scenes on a Dask cluster and finalizes each scene.

    Steps: :meth:`submit_more` keeps up to ``limit`` block tasks in flight, opening the
    next scene when the open ones have nothing left to submit; :meth:`collect` takes each
    finished block into its scene (failing the scene on a task error, resubmitting a block
    once whose inputs the cluster lost); a scene whose last block arrived is finalized on
    a helper thread and :meth:`collect_finalized` records its outcome; :meth:`close`
    cancels and cleans up whatever did not finish. Outcomes go to ``outcomes`` (by scene
    index) and to ``on_outcome`` as they happen.
    """

    def __init__(
        self,
        client: Client,
        *,
        out: Path,
        model: CheckpointMetadata,
        model_path: str,
        settings: InferenceSettings,
        spec: BlockTaskSpec,
        checkpoint_ref: Any,
        send_checkpoint: Callable[[], Any],
        config_hash: str,
        options: dict[str, Any],
        limit: int,
        gpu: bool,
        progress: bool,
        stop: threading.Event | None,
        outcomes: dict[int, SceneOutcome],
        on_outcome: Callable[[SceneOutcome], None] | None,
        stac: Mapping[str, StacScene] | None = None,
    ) -> None:
        self.client, self.out, self.model, self.model_path = client, out, model, model_path
        self.settings, self.spec, self.config_hash, self.options = settings, spec, config_hash, options
        self.limit, self.gpu, self.progress, self.stop = limit, gpu, progress, stop
        self.outcomes, self.on_outcome = outcomes, on_outcome
        self.stac = stac or {}  # scene path -> the STAC item it came from
        self._checkpoint, self._send_checkpoint = checkpoint_ref, send_checkpoint
        self.todo: list[tuple[int, SceneInfo, TilingPlan]] = []
        self.jobs: dict[int, SceneJob] = {}  # scene index -> job, in submission order
        self.where: dict[str, tuple[int, int]] = {}  # future key -> (scene index, block index)
        self.finals: dict[int, LocalFuture] = {}
        self.resubmitted: set[tuple[int, int]] = set()
        self.ac = as_completed()
        self.in_flight = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-finalize")
        self.scene_bar = tqdm(total=0, desc="scenes", unit="scene", disable=not progress, position=0)
        self.block_bar = tqdm(total=0, desc="blocks", unit="block", disable=not progress, position=1, leave=False)
        self.shown: int | None = None

    # -- the loop ------------------------------------------------------------------------------
    def run(self, scenes: list[tuple[int, SceneInfo, TilingPlan]]) -> None:
        """Compute every scene of ``scenes`` (index, info, plan); returns when all are recorded."""
        self.todo = list(scenes)
        self.scene_bar.reset(total=len(scenes))
        fatal: BaseException | None = None
        try:
            self.submit_more()
            self.show(next(iter(self.jobs), None))
            while self.in_flight or self.finals:
                self.collect_finalized()
                if not self.in_flight:
                    if self.finals:
                        time.sleep(0.05)
                        continue
                    break
                for fut in next_batch(self.ac, self.stop):
                    self.collect(fut)
                if self.stop is not None and self.stop.is_set():
                    for i in [k for k in self.jobs if k not in self.finals]:
                        self.fail(i, f"scene {self.jobs[i].info.path}: interrupted before it finished")
                    self.in_flight = 0
                else:
                    self.submit_more()
        except BaseException as exc:
            fatal = exc
            raise
        finally:
            self.close(fatal)

    # -- submitting ----------------------------------------------------------------------------
    def checkpoint_ref(self) -> Any:
        """The model's bytes on the workers. Scattered data lives only in worker memory: when
        every worker holding it dies (a task that crashes its worker, retried on the others),
        the scheduler cancels it and every task that depends on it; send it again then."""
        if self._checkpoint.status != "finished":
            log.warning("the model's copy on the workers was lost (every worker holding it died); sending it again")
            self._checkpoint = self._send_checkpoint()
        return self._checkpoint

    def submit(self, i: int, block: Block) -> None:
        """One block task of scene ``i``."""
        job = self.jobs[i]
        fut = self.client.submit(
            process_block,
            job.info,
            block,
            self.checkpoint_ref(),
            job.spec,
            pure=False,
            key=f"block-{job.info.stem}-{block.index}-{os.urandom(4).hex()}",
            resources={"GPU": 1} if self.gpu else None,
        )
        job.futures.add(fut)
        self.where[str(fut.key)] = (i, block.index)
        self.ac.add(fut)
        self.in_flight += 1

    def submit_more(self) -> None:
        """Fill the cluster up to ``limit`` tasks: next blocks of open scenes, then new scenes."""
        while self.in_flight < self.limit and not (self.stop is not None and self.stop.is_set()):
            i = next((k for k, j in self.jobs.items() if j.next_block < len(j.plan.blocks)), None)
            if i is None:
                if not self.todo:
                    return
                i, info, plan = self.todo.pop(0)
                self.jobs[i] = SceneJob(
                    info, plan, self.out / info.stem, self.model, self.settings, self.spec, self.stac.get(info.path)
                )
            job = self.jobs[i]
            block = job.plan.blocks[job.next_block]
            job.next_block += 1
            self.submit(i, block)

    # -- collecting ----------------------------------------------------------------------------
    def collect(self, fut: Any) -> None:
        """Take one finished block task into its scene."""
        self.in_flight -= 1
        i, bidx = self.where.pop(str(fut.key))
        job = self.jobs.get(i)
        if job is not None:
            job.futures.discard(fut)
        if job is None or job.failed or i in self.finals:
            return
        if fut.status == "error":
            exc = fut.exception()
            if isinstance(exc, OutputError):
                raise exc
            self.fail(i, describe_task_error(exc, job.info, bidx))
            return
        try:
            result = fut.result()
        except FutureCancelledError:
            # not cancelled by us (those scenes were skipped above): the scheduler lost the
            # block's inputs because the workers holding them died. Submit it once more
            # (checkpoint_ref sends the model again), then fail the scene rather than wait
            # forever or drop it.
            if (i, bidx) not in self.resubmitted:
                self.resubmitted.add((i, bidx))
                self.submit(i, job.plan.blocks[bidx])
            else:
                self.fail(
                    i,
                    f"scene {job.info.path}: a worker died while processing block {bidx}, and "
                    "the workers holding its inputs died with it, twice (out of memory, or a "
                    "crash in native code)",
                )
            return
        job.add(result)
        if self.shown == i:
            self.block_bar.update(1)
        if not job.pending:
            self.finals[i] = self.pool.submit(finalize_scene, job, self.config_hash, self.options, self.model_path)
            self.show(next((k for k in self.jobs if k not in self.finals), None))

    def collect_finalized(self) -> None:
        """Record the scenes whose finalization ended; a failure fails that scene only,
        except an :class:`OutputError` (the output folder cannot take files), which stops the run."""
        for i, lf in list(self.finals.items()):
            if not lf.done():
                continue
            del self.finals[i]
            job = self.jobs.pop(i)
            try:
                self.record(i, lf.result())
            except OutputError:
                job.abort()
                raise
            except Exception as exc:
                job.abort()
                msg = (
                    str(exc)
                    if isinstance(exc, GeounetError)
                    else (f"scene {job.info.path}: writing outputs failed: {type(exc).__name__}: {exc}")
                )
                log.debug("%s", traceback.format_exc())
                self.record(i, job.outcome("failed", msg))

    # -- outcomes ------------------------------------------------------------------------------
    def record(self, i: int, outcome: SceneOutcome) -> None:
        self.outcomes[i] = outcome
        self.scene_bar.update(1)
        if outcome.status == "failed":
            log.error("%s", outcome.error)
        if self.on_outcome:
            self.on_outcome(outcome)

    def fail(self, i: int, message: str) -> None:
        """Scene ``i`` failed: cancel its other blocks, remove what it wrote, record why."""
        job = self.jobs.pop(i)
        job.failed = message
        self.client.cancel([f for f in job.futures if not f.done()])
        job.abort()
        self.record(i, job.outcome("failed", message))

    def show(self, i: int | None) -> None:
        """Point the block progress bar at scene ``i``."""
        if i is None or i == self.shown or not self.progress:
            return
        self.shown = i
        job = self.jobs[i]
        self.block_bar.reset(total=len(job.plan.blocks))
        self.block_bar.set_description(f"blocks {job.info.stem}")
        self.block_bar.update(len(job.plan.blocks) - len(job.pending))

    def close(self, fatal: BaseException | None) -> None:
        """Wait for running finalizations, cancel and clean up unfinished scenes, record
        every scene that did not finish."""
        for lf in self.finals.values():
            with contextlib.suppress(Exception):
                lf.result()
        self.pool.shutdown(wait=True)
        for i, job in list(self.jobs.items()):
            self.client.cancel([f for f in job.futures if not f.done()])
            job.abort()
            reason = f"run stopped: {fatal}" if fatal is not None else f"scene {job.info.path}: did not finish"
            self.outcomes[i] = SceneOutcome(
                scene=job.info.path, stem=job.info.stem, status="failed", out_dir=str(job.folder), error=reason
            )
        self.block_bar.close()
        self.scene_bar.close()
        for i, info, _plan in self.todo:
            self.outcomes.setdefault(
                i,
                SceneOutcome(
                    scene=info.path,
                    stem=info.stem,
                    status="failed",
                    out_dir=str(self.out / info.stem),
                    error=f"scene {info.path}: not started (run interrupted)",
                ),
            )
