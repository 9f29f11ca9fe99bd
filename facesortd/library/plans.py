"""What a library scan writes (scan.py): plans, each a correction (or none) and the placement
rows it moves, batched by kind into one correction and written in one transaction each, so a
crash repeats at most a harmless look and a refused batch is tried again one photo at a time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from facesortd.store.database import Store, decode_path, encode_path

__all__ = ["Learn", "Plan", "apply"]

log = logging.getLogger("facesortd.scan")

Learn = Callable[[Store, str, dict], dict]
"""(store, op, args) -> the correction's result: people.corrections.from_library, wired by the app."""


@dataclass
class Plan:
    """One unit written in one transaction: a correction (or none) and the rows it moves."""

    op: Optional[str]
    args: dict
    rows: list[tuple[int, Optional[Path], Optional[str]]]   # (row id, new path, new kind); None path: delete
    what: str
    parts: list["Plan"] = field(default_factory=list)      # the plans a batch was made of


def apply(store: Store, learn: Optional[Learn], plans: list[Plan],
          dry_run: bool) -> list[tuple[str, dict]]:
    """Write the plans, those of one kind as one correction (a folder of photos deleted is one
    history row, not hundreds); a batch refused is tried again one photo at a time. Returns the
    corrections recorded (``dry_run``: that would be), as (op, args)."""
    corrections: list[tuple[str, dict]] = []
    for plan in _batched(plans):
        if plan.op is not None:
            corrections.append((plan.op, plan.args))
        if dry_run:
            log.info("dry run: the library says %s", plan.what)
            continue
        if plan.op is not None and learn is None:
            log.warning("%s, but this placer has no way to record corrections; the files are "
                        "left where they are", plan.what)
            plan = Plan(None, {}, [(i, p, "gone") for i, p, _ in plan.rows], plan.what)
        if not _write(store, learn, plan) and len(plan.parts) > 1:
            corrections.pop()
            for part in plan.parts:
                if _write(store, learn, part) and part.op is not None:
                    corrections.append((part.op, part.args))
    return corrections


def _write(store: Store, learn: Optional[Learn], plan: Plan) -> bool:
    """One plan in one transaction: its correction and the placement rows it moves."""
    try:
        with store.transaction() as conn:
            if plan.op is not None:
                learn(store, plan.op, plan.args)   # type: ignore[misc]
            now = time.time()
            for row_id, path, kind in plan.rows:
                if path is None:
                    conn.execute("DELETE FROM placements WHERE id = ?", (row_id,))
                else:
                    # a photo renamed by the person keeps the name they gave it from now on
                    # (also on its way to and from where it meant nothing: 'gone')
                    was = conn.execute("SELECT path FROM placements WHERE id = ? AND "
                                       "kind IN ('main', 'gone')", (row_id,)).fetchone()
                    if kind in (None, "main", "gone") and was \
                            and decode_path(was[0]).name != path.name:
                        conn.execute("UPDATE placements SET chosen_name = ? WHERE id = ?",
                                     (path.name, row_id))
                    conn.execute("UPDATE placements SET path = ?, kind = COALESCE(?, kind), "
                                 "updated_at = ? WHERE id = ?",
                                 (encode_path(path), kind, now, row_id))
                    conn.execute("DELETE FROM library_hashes WHERE path = ?",
                                 (encode_path(path),))
    except Exception as exc:   # one correction refused (a person merged meanwhile)
        log.error("library: %s; not recorded (%s): a later scan of the library tries again; if it "
                  "repeats, make the correction on the review page", plan.what, exc)
        return False
    log.info("library: %s", plan.what)
    return True


_LISTS = ("faces", "images")


def _batched(plans: list[Plan]) -> list[Plan]:
    """Plans of the same correction (the same op and target) joined into one; each keeps its
    parts, to be tried alone if the batch is refused."""
    out: dict[tuple, Plan] = {}
    for plan in plans:
        if plan.op in ("merge", "rename"):
            out[(len(out),)] = plan
            continue
        fixed = tuple(sorted((k, v) for k, v in plan.args.items() if k not in _LISTS))
        key = (plan.op, fixed)
        have = out.get(key)
        if have is None:
            out[key] = Plan(plan.op, dict(plan.args), list(plan.rows), plan.what, [plan])
            continue
        for k in _LISTS:
            if k in plan.args:
                have.args[k] = sorted(set(have.args.get(k, [])) | set(plan.args[k]))
        have.rows += plan.rows
        have.parts.append(plan)
        have.what = f"{have.parts[0].what} (and {len(have.parts) - 1} more like it)"
    return list(out.values())
