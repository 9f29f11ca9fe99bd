"""``facesortd bench cluster``: clustering speed and memory on synthetic 512-d faces.

Synthetic library: unit vectors in identity clusters (sizes geometric, mean ~10, up to 500;
faces ~0.4 apart within a person, people ~1.4 apart) plus unclustered singletons. The store keeps
the eps-neighbour graph as faces arrive (one 1×N product per new face, the "64 against N" figure),
so a recluster runs over that graph; here the graph is built exactly per person (nothing across
people lies within eps, which the bench checks on a sample), and a brute-force build is timed too
up to ``brute_graph_upto`` faces.
"""

from __future__ import annotations

import resource
import time
import tracemalloc
from typing import Callable, Optional, Sequence

import numpy as np

from facesortd.people.assign import FaceIndex, assign_incremental
from facesortd.people.clustering import ClusterParams, Graph, build_graph, radius_neighbours
from facesortd.people.recluster import recluster

__all__ = ["synthetic_faces", "bench_cluster"]


def synthetic_faces(n: int, dim: int = 512, seed: int = 0, singletons: float = 0.2,
                    spread: float = 0.3, out: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, dim] unit vectors, true person per row; -1 for a singleton), built in chunks,
    into ``out[:n]`` when given (one matrix for the whole bench, as a store keeps one buffer)."""
    rng = np.random.default_rng(seed)
    n_clustered = int(n * (1 - singletons))
    sizes = np.minimum(rng.geometric(1 / 10, size=n_clustered // 2 + 1) + 1, 500)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n_clustered) + 1]
    sizes[-1] -= sizes.sum() - n_clustered
    sizes = sizes[sizes > 0]
    who = np.concatenate([np.repeat(np.arange(len(sizes)), sizes), np.full(n - n_clustered, -1)])
    who = who[rng.permutation(n)]
    x = np.empty((n, dim), np.float32) if out is None else out[:n]
    # people a few hundred at a time (their centres, then their faces): no table of all centres
    order = np.argsort(who, kind="stable")
    sorted_who = who[order]
    step = 1 << 13     # 16 MB blocks: the generator adds little to the bench's peak memory
    n_single = int(np.searchsorted(sorted_who, 0))
    for s in range(0, n_single, step):
        rows = order[s:min(s + step, n_single)]
        block = rng.standard_normal((len(rows), dim), dtype=np.float32)
        x[rows] = block / np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
    per = 512
    for p0 in range(0, len(sizes), per):
        centres = rng.standard_normal((min(per, len(sizes) - p0), dim), dtype=np.float32)
        centres /= np.sqrt(np.einsum("ij,ij->i", centres, centres))[:, None]
        lo, hi = np.searchsorted(sorted_who, [p0, p0 + per])
        rows = order[lo:hi]
        block = rng.standard_normal((len(rows), dim), dtype=np.float32)
        block *= np.float32(spread / np.sqrt(dim))
        block += centres[who[rows] - p0]
        x[rows] = block / np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
    return x, who


def person_graph(x: np.ndarray, who: np.ndarray, radius: float) -> Graph:
    """Exact eps-edges of a synthetic library, person by person (no edge crosses people)."""
    order = np.argsort(who, kind="stable")
    order = order[who[order] >= 0]
    bounds = np.flatnonzero(np.diff(who[order])) + 1
    groups = np.split(order, bounds)
    # room for every pair of every person, filled in place: the untouched tail is never paged
    # in, and there is no second copy as a concatenation of the pieces would make
    most = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    gi, gj = np.empty(most, np.int32), np.empty(most, np.int32)
    gd = np.empty(most, np.float32)
    k = 0
    for rows in groups:
        g = build_graph(x[rows], radius)
        m = len(g.i)
        gi[k:k + m], gj[k:k + m], gd[k:k + m] = rows[g.i], rows[g.j], g.d
        k += m
    return Graph(gi[:k], gj[:k], gd[:k])


def _check_no_cross_edges(x: np.ndarray, who: np.ndarray, radius: float, sample: int = 256) -> int:
    rng = np.random.default_rng(1)
    q = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    cross = 0
    for qi, r, _ in radius_neighbours(x, x[q], radius):
        other = r != q[qi]
        cross += int((other & ((who[r] != who[q[qi]]) | (who[r] < 0))).sum())
    return cross


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_cluster(n_faces: Sequence[int] = (10_000, 30_000, 100_000), dim: int = 512,
                  assign_against: Sequence[int] = (100_000, 1_000_000), eps: float = 0.6,
                  batch: int = 64, brute_graph_upto: int = 30_000, seed: int = 0,
                  out: Optional[Callable[[str], object]] = print) -> dict:
    """Time full reclusters and a 64-face incremental assignment; return (and print) the figures."""
    say = out or (lambda *_: None)
    params = ClusterParams(eps=eps, min_samples=2)
    figures: dict = {"dim": dim, "eps": eps, "recluster": {}, "assign": {}}
    # one buffer for every size: freed and re-made 2 GB matrices would leave the heap fragmented
    # and count twice in the peak RSS (the daemon, too, keeps one growing buffer)
    buf = np.empty((max([*n_faces, *(a + batch for a in assign_against), 0]), dim), np.float32)
    scoring: list = []     # scored at the end: a million label strings are not the clustering's
    for n in n_faces:
        x, who = synthetic_faces(n, dim, seed, out=buf)
        row: dict = {"cross_person_edges_in_sample": _check_no_cross_edges(x, who, eps)}
        t = time.perf_counter(); graph = person_graph(x, who, eps)
        row["graph_edges"] = len(graph.i)
        if n <= brute_graph_upto:
            t = time.perf_counter(); build_graph(x, eps)
            row["brute_graph_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        res = recluster(np.arange(n), x, np.arange(n), params, graph=graph)
        row["recluster_s"] = round(time.perf_counter() - t, 2)
        row["peak_rss_mb"] = round(_rss_mb())
        del x, graph
        figures["recluster"][n] = row
        say(f"recluster {n:>9,} faces: {row}")
        scoring.append((n, who, res.identity))
    for n in assign_against:
        x, who = synthetic_faces(n + batch, dim, seed + 1, out=buf)
        stored, new = np.arange(n), np.arange(n, n + batch)
        index = FaceIndex.from_arrays(stored, x[:n], who[:n], stored)
        t = time.perf_counter()
        res = assign_incremental(index, new, x[new], new, params)
        elapsed = time.perf_counter() - t
        # memory in a second, identical call (the index is not changed): tracing slows it
        tracemalloc.start()
        assign_incremental(index, new, x[new], new, params)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        row = {"assign_s": round(elapsed, 3), "assign_extra_mb": round(peak / 2**20, 1),
               "matrix_mb": round(x[:n].nbytes / 2**20), "peak_rss_mb": round(_rss_mb()),
               "joined": int((res.identity[:batch] >= 0).sum()), "limited": res.limited}
        figures["assign"][n] = row
        say(f"assign {batch} against {n:>9,} stored: {row}")
        del x, index
    figures["peak_rss_mb"] = round(_rss_mb())    # the whole run's, before scoring
    say(f"peak RSS {figures['peak_rss_mb']} MB")
    del buf
    from facesortd.bench.metrics import bcubed
    for n, who, found in scoring:
        truth = [f"p{w}" if w >= 0 else f"s{i}" for i, w in enumerate(who)]
        figures["recluster"][n]["bcubed_f1"] = round(bcubed(truth, found)[2], 4)
        say(f"recluster {n:>9,} faces: BCubed F1 {figures['recluster'][n]['bcubed_f1']}")
    return figures


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="*", default=[10_000, 30_000, 100_000])
    p.add_argument("--against", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    a = p.parse_args()
    print(json.dumps(bench_cluster(a.n, a.dim, a.against), indent=1, default=str))
