"""What happened to each scene of a run: the record run.json, the summary and the exit code read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["success", "skipped", "failed"]


@dataclass
class SceneOutcome:
    """What happened to one scene (recorded in run.json)."""

    scene: str
    stem: str
    status: Status
    out_dir: str
    error: str | None = None
    polygons: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    pixels: int = 0
    blocks: int = 0
    stac_item: str | None = None  # the id of the STAC item the scene came from

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
