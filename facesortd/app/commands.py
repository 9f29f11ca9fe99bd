"""The one-shot commands that work on a state folder while no daemon runs: ``facesortd recluster``
and ``facesortd undo``. Each opens the folder with ``open_state`` like the daemon does."""

from __future__ import annotations

import os
import signal
from typing import Optional

from facesortd.app.state import open_state
from facesortd.config import Config
from facesortd.errors import FacesortdError
from facesortd.library.journal import Op
from facesortd.library.placer import parse_since
from facesortd.store.lock import StateBusy

__all__ = ["recluster", "undo"]


def recluster(config: Config) -> dict:
    """Recluster now. A daemon (or ``facesortd web``) holding the state folder is asked to do it
    (SIGUSR1 to the pid in ``<state_dir>/lock``); otherwise it runs here and the counts return."""
    try:
        state = open_state(config, existing=True)
    except StateBusy as busy:
        if busy.pid is None:
            raise FacesortdError(f"{config.state_dir} is locked by a process that wrote no pid in "
                                 f"{config.state_dir / 'lock'}; try again in a moment") from None
        os.kill(busy.pid, signal.SIGUSR1)
        return {"signalled_daemon": busy.pid}
    with state:
        service = state.identities
        return service.recluster(reason="facesortd recluster").counts() | (service.last_counts or {})


def undo(config: Config, last: Optional[int], since: Optional[str],
         dry_run: bool = False) -> list[Op]:
    """Put back the files of the last ``last`` placements (or those since ``since``: see
    ``placer.parse_since``); never beside a running daemon (it takes the lock). The journal is
    replayed first, except in a dry run, which changes nothing."""
    when = parse_since(since) if since is not None else None
    with open_state(config, load_vectors=False, replay=not dry_run) as state:
        return state.placer.undo(last=last, since=when, dry_run=dry_run)
