"""One way to open a state folder: the lock, the store, the journal replayed, the identity service
and the placer, for ``run``, ``web``, ``recluster`` and ``undo`` alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from facesortd.config import Config
from facesortd.errors import FacesortdError
from facesortd.library.loop import PlacerLoop
from facesortd.library.placer import Placer
from facesortd.models.embedders import eps_model, tuned_eps
from facesortd.people.corrections import from_library
from facesortd.people.service import IdentityService, service_for
from facesortd.store.database import DB_NAME, Store
from facesortd.store.lock import StateLock

__all__ = ["State", "open_state"]

log = logging.getLogger("facesortd")


@dataclass
class State:
    """An open state folder. ``close()`` stops the identity thread (its last changes are written),
    then the placer loop if one was started (those changes get placed), closes the store and
    releases the lock: the one shutdown order of everything that opens a state folder."""

    config: Config
    lock: StateLock
    store: Store
    placer: Placer
    identities: IdentityService
    placer_loop: Optional[PlacerLoop] = None

    def close(self) -> None:
        try:
            self.identities.stop()
            if self.placer_loop is not None:
                self.placer_loop.stop()
                self.placer_loop = None
            self.store.close()
        finally:
            self.lock.release()

    def __enter__(self) -> "State":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_state(config: Config, *, existing: bool = False, load_vectors: bool = True,
               replay: bool = True, eps_of: Optional[str] = None,
               choose_model: Optional[Callable[[Optional[str]], str]] = None,
               on_changed: Optional[Callable[[], None]] = None) -> State:
    """Take the lock (``store.lock.StateBusy`` when another process holds it), open the store
    (migrating it forward), finish or roll back what a crash interrupted (``replay``), and build
    the identity service (not started) and the placer.

    ``existing``: refuse a state folder without a store instead of creating one. ``eps_of``: the
    embedder whose tuned eps ``clustering.eps: auto`` means (default: the store's model, else
    ``embedder.name`` would choose); no model is loaded here. ``choose_model``: called with the
    store's model id (None for a new store) once the store is open and the journal replayed;
    returns the embedder name whose eps applies (the daemon loads its model there, since
    ``embedder.name: auto`` keeps the store's model).
    """
    if existing and not (config.state_dir / DB_NAME).exists():
        raise FacesortdError(f"no store yet in {config.state_dir}: run `facesortd run` first")
    lock = StateLock(config.state_dir)
    lock.acquire()
    store = None
    try:
        store = Store.open(config.state_dir, load_vectors=load_vectors)
        placer = Placer(config, store, learn=from_library)   # the library's corrections
        if replay:
            placer.replay()
        if choose_model is not None:
            eps_of = choose_model(store.model_id)
        model = eps_of or eps_model(config.embedder, store.model_id)
        identities = service_for(store, config.clustering, tuned_eps(model), on_changed=on_changed)
        return State(config, lock, store, placer, identities)
    except BaseException:
        if store is not None:
            store.close()
        lock.release()
        raise
