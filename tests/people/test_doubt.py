"""The doubt score (``people.doubt``): a face put in the wrong person comes first, with its real
person as the candidate; measured on real dlib vectors of the small library."""

from __future__ import annotations

import numpy as np
import pytest

from facesortd.people.doubt import doubt
from facesortd.store.database import Store

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


def _labels(store: Store, ids: np.ndarray) -> np.ndarray:
    with store.read() as conn:
        of = dict(conn.execute("SELECT id, COALESCE(identity_id, -1) FROM faces"))
    return np.array([of[int(f)] for f in ids], np.int64)


def test_a_face_in_the_wrong_person_is_the_most_doubtful(library):
    with Store.open(library.root / "state") as store:
        ids, matrix = store.vectors()
        ident = _labels(store, ids)
        people = {p: library.main_identity(pairs) for p, pairs in library.faces_by_person(store).items()}
        wrong_face = library.faces_by_person(store)["Paul_McCartney"][0][0]
    row = int(np.flatnonzero(ids == wrong_face)[0])
    for person in ("JK_Rowling", "Fujio_Cho"):
        moved = ident.copy()
        moved[row] = people[person]     # as if the clustering had put Paul's face there
        rows, score, cand = doubt(matrix, moved, eps=0.43)
        top = rows[np.argmax(score)]
        assert top == row, (person, ids[rows[np.argsort(-score)[:5]]])
        assert cand[rows == row][0] == people["Paul_McCartney"]


def test_every_assigned_face_of_a_person_of_two_or_more_is_scored():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.05, (5, 8)) + 1, rng.normal(0, 0.05, (4, 8)) - 1
    lone = rng.normal(0, 0.05, (1, 8)) + 5      # a person of one face, far from both
    matrix = np.vstack([a, b, lone, lone + 0.01]).astype(np.float32)
    ident = np.array([1] * 5 + [2] * 4 + [3, -1])          # 3 has one face; the last has none
    rows, score, cand = doubt(matrix, ident, eps=0.5)
    assert sorted(rows.tolist()) == list(range(9))
    assert set(cand[rows < 5].tolist()) == {2} and set(cand[(rows >= 5) & (rows < 9)].tolist()) == {1}
    only = doubt(matrix, ident, eps=0.5, rows=np.array([0, 9, 10]))[0]
    assert only.tolist() == [0]
    # one person: no candidate, and the score is only how far each face sits from the others
    rows1, _, cand1 = doubt(matrix[:5], ident[:5], eps=0.5)
    assert len(rows1) == 5 and (cand1 == -1).all()
