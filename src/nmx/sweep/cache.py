"""The sweep's resumable part: one JSON file per finished point, named by the point's key.

    OUT/points/<key>.json   {"format", "key", "recipe", "result", "worker", "finished"}

The driver writes an entry (atomically: a temporary file renamed over the name) as soon as the point's
result reaches it, so killing a sweep loses only the points that were running. An entry is trusted
only if it parses, carries this format, its own key, the same recipe and a result with a perplexity;
anything else (cut short, edited, from another nmx) is logged, treated as not done and recomputed.
Failed points are never cached: a re-run tries them again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from nmx.io import write_json_atomic
from nmx.sweep.spec import CACHE_FORMAT, Point

log = logging.getLogger(__name__)


class PointCache:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, point: Point) -> dict[str, Any] | None:
        """The cached entry of `point`, or None when it is missing or unusable (logged)."""
        path = self.path(point.key)
        if not path.exists():
            return None
        problem = None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            entry, problem = None, f"unreadable ({type(err).__name__})"
        if problem is None:
            problem = _problem(entry, point)
        if problem is not None:
            log.warning("cached point %s (%s) is %s; recomputing it", path, point.label, problem)
            return None
        return entry

    def store(self, point: Point, result: dict[str, Any], worker: dict[str, Any]) -> Path:
        entry = {"format": CACHE_FORMAT, "key": point.key, "label": point.label, "recipe": point.recipe.as_dict(),
                 "result": result, "worker": worker, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        path = self.path(point.key)
        write_json_atomic(path, entry)
        return path


def _problem(entry: Any, point: Point) -> str | None:
    if not isinstance(entry, dict):
        return "not a cached point (no JSON object)"
    if entry.get("format") != CACHE_FORMAT:
        return f"of another format ({str(entry.get('format'))[:40]!r}, expected {CACHE_FORMAT!r})"
    if entry.get("key") != point.key:
        return "named for another point (its key differs)"
    if entry.get("recipe") != point.recipe.as_dict():
        return "for another recipe"
    result = entry.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("perplexity"), (int, float)):
        return "without a result"
    return None
