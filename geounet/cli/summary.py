"""End-of-run summary table and the exit code that goes with it."""

from __future__ import annotations

from collections.abc import Sequence

import click

from geounet.batch.outcomes import SceneOutcome
from geounet.errors import EXIT_ALL_FAILED, EXIT_OK, EXIT_SOME_FAILED


def exit_code_for_outcomes(outcomes: Sequence[SceneOutcome]) -> int:
    """0 when nothing failed, 5 when every scene failed, 1 when some did."""
    failed = sum(o.status == "failed" for o in outcomes)
    if not failed:
        return EXIT_OK
    return EXIT_ALL_FAILED if failed == len(outcomes) else EXIT_SOME_FAILED


def print_summary(outcomes: Sequence[SceneOutcome]) -> None:
    """A table: scene, status, polygons per class, seconds; then failures with their cause."""
    if not outcomes:
        click.echo("no scenes")
        return
    width = max(8, *(len(o.stem) for o in outcomes))
    click.echo(f"{'scene':<{width}}  {'status':<8}  {'polygons':>8}  {'seconds':>8}")
    for o in outcomes:
        n = sum(o.polygons.values())
        secs = o.timings.get("wall", 0.0)
        click.echo(f"{o.stem:<{width}}  {o.status:<8}  {n:>8}  {secs:>8.1f}")
    counts = {s: sum(o.status == s for o in outcomes) for s in ("success", "skipped", "failed")}
    click.echo(
        f"{len(outcomes)} scene(s): {counts['success']} done, {counts['skipped']} skipped "
        f"(already complete), {counts['failed']} failed"
    )
    for o in outcomes:
        if o.status == "failed":
            click.echo(f"FAILED {o.error}", err=True)
