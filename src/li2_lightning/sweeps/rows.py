"""A sweep's result rows: as the sweep stores them, and read from and appended to a results JSONL."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from li2_lightning.sweeps.spec import point_id


def point_row(point: dict, row: dict, spec: dict, finite: bool, population_size: int, elapsed: float) -> dict:
    """A member's results row as the sweep stores it: with ``id``, ``point``, ``sweep``, the
    population's size and time, and ``diverged`` / ``outcome`` (parameters or final train loss not
    finite: ``diverged``)."""
    loss = row.get("final_train_loss")
    diverged = not finite or loss is None or not math.isfinite(loss)
    if "p_star_multiplier" in point:
        row["p_star_multiplier"] = point["p_star_multiplier"]
    row.update(id=point_id(point), point=point, sweep=spec["name"], population_size=population_size,
               population_time_s=round(elapsed, 3), diverged=diverged, outcome="diverged" if diverged else "finished")
    return _finite(row)


def _finite(v: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def read_rows(path: str | os.PathLike) -> dict[str, dict]:
    """Rows of a results JSONL by id (unparsable lines, e.g. a torn last line, are skipped)."""
    path = Path(path)
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            rows[row["id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return rows


def done_ids(results: str | os.PathLike) -> set[str]:
    """Ids of the points in a results JSONL."""
    return set(read_rows(results))


def append_results(results: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows as JSON lines with one write loop and an fsync; a short write raises OSError."""
    from li2_lightning.study import write_jsonl

    path = Path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if path.is_file() and path.stat().st_size and not _ends_with_newline(path):
        with path.open("a") as f:  # a torn line from a killed writer stays on its own line
            f.write("\n")
    write_jsonl(path, rows, append=True)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
