"""Pruned neighbour search: exactly the pairs brute force finds, with bounds kept up to date."""

from __future__ import annotations

import numpy as np
import pytest

from facesortd.people.clustering import radius_neighbours
from facesortd.people.index import IdentityBounds, SearchCache, index_neighbours, sqnorms, tailnorms


def pairs(found) -> set[tuple[int, int]]:
    found = list(found)
    if not found:
        return set()
    q, r, _ = map(np.concatenate, zip(*found))
    return set(zip(q.tolist(), r.tolist()))


def people(n_people: int, per: int, dim: int, rng, spread: float, loose: int):
    centres = rng.normal(size=(n_people, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    who = np.r_[np.repeat(np.arange(n_people), per), np.full(loose, -1)]
    x = np.where(who[:, None] >= 0, centres[np.maximum(who, 0)], 0) \
        + np.where(who[:, None] >= 0, spread / np.sqrt(dim), 1.0) * rng.normal(size=(len(who), dim))
    return x.astype(np.float32), who


def covered(bounds: IdentityBounds, x: np.ndarray, identity: np.ndarray) -> bool:
    slot = bounds.slots(identity)
    lab = identity >= 0
    far = np.linalg.norm(x[lab] - bounds.centres[slot[lab]], axis=1)
    return bool((slot[lab] >= 0).all() and (far <= bounds.radius[slot[lab]]).all())


@pytest.mark.parametrize("unit", [True, False])
def test_pruned_search_finds_exactly_the_brute_force_pairs(unit):
    rng = np.random.default_rng(3)
    x, who = people(40, 8, 32, rng, spread=0.5, loose=200)
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    # labels that are not the true people too: a bound must cover any grouping it is given
    identity = who.copy()
    identity[rng.choice(len(x), 40, replace=False)] = rng.integers(0, 45, 40)
    queries = np.r_[x[rng.choice(len(x), 20)] + 0.05 * rng.normal(size=(20, 32)),
                    rng.normal(size=(5, 32))].astype(np.float32)
    stored, q = x, queries
    bounds = IdentityBounds.build(stored, identity)
    assert covered(bounds, stored, identity)
    for radius in (0.3, 0.7, 1.5):
        want = pairs(radius_neighbours(stored, q, radius))
        got = pairs(index_neighbours(stored, sqnorms(stored), identity, q, radius, bounds,
                                     tailnorms(stored)))
        assert got == want and (radius < 1 or len(want) > 20)


def test_search_cache_follows_appends_and_relabelled_faces():
    rng = np.random.default_rng(4)
    x, who = people(30, 6, 16, rng, spread=0.3, loose=60)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(len(x)) * 3 + 1
    cache = SearchCache()
    n0 = 150
    cache.sync(ids[:n0], x[:n0], who[:n0])
    first = cache.bounds
    identity = who.copy()
    identity[:20] = identity[20:40]          # faces moved to other people, some into new ones
    identity[40:45] = 99
    cache.sync(ids, x, identity)
    assert cache.bounds is first             # widened in place, not rebuilt
    assert covered(cache.bounds, x, identity)
    assert np.allclose(cache.sq, sqnorms(x)) and np.allclose(cache.tails, tailnorms(x), rtol=1e-4)
    q = x[rng.choice(len(x), 16)] + np.float32(0.02)
    got = pairs(index_neighbours(x, cache.sq, identity, q, 0.5, cache.bounds, cache.tails))
    assert got == pairs(radius_neighbours(x, q, 0.5))
    # a removed row changes the ids before the end: everything is rebuilt
    keep = np.r_[0:10, 11:len(x)]
    cache.sync(ids[keep], x[keep], identity[keep])
    assert cache.bounds is not first and covered(cache.bounds, x[keep], identity[keep])


@pytest.mark.parametrize("radius", [0.2, 0.6, 1.0])
def test_identity_bounds_keep_every_identity_a_query_can_reach(radius):
    rng = np.random.default_rng(5)
    x, who = people(25, 10, 64, rng, spread=0.4, loose=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    b = IdentityBounds.build(x, who)
    # each query sits just inside radius + eps of one centre, off towards the last dimensions,
    # where only the tail bound of the first pass can see it
    u = rng.normal(size=(b.n, 64)) * np.linspace(0.05, 1.0, 64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    q = (b.centres[: b.n] + (b.radius[: b.n, None] + radius - 1e-3) * u).astype(np.float32)
    for k in range(b.n):
        keep = b.candidates(q[k:k + 1], sqnorms(q[k:k + 1]), radius)
        assert keep[k]
        d = np.linalg.norm(b.centres[: b.n] - q[k], axis=1)
        far = d > b.radius[: b.n] + radius + 0.05
        assert not keep[far].any()          # and the far ones are left out
