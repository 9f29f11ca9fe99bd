"""decode_arena: pixels written by one side of the shared mapping come back intact on the other."""

import numpy as np
import pytest

from facesortd.errors import BadImage
from facesortd.ingest.arena import Arena


@pytest.fixture
def arenas():
    ours = Arena.create(2, region_bytes=200_000)
    if ours is None:
        pytest.skip("no memfd on this system (pixels go by socket)")
    theirs = Arena(ours.fd, 2, 200_000)    # the decoding process maps the same fd
    yield ours, theirs
    theirs._mm.close()
    ours.close()


def test_pixels_round_trip_and_big_ones_stay_inline(arenas):
    ours, theirs = arenas
    rng = np.random.default_rng(0)
    small = [rng.integers(0, 256, (160, 160, 3), dtype=np.uint8) for _ in range(2)]
    big = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)       # 270,000 bytes: no room
    results = [("a" * 64, 10, small[0], 1.0, (160, 160)), BadImage("broken"),
               ("b" * 64, 11, big, 0.5, (600, 600)), ("c" * 64, 12, small[1], 1.0, (160, 160))]
    packed = theirs.pack(1, results)
    assert isinstance(packed[0][2], tuple) and isinstance(packed[3][2], tuple)
    assert packed[2][2] is big and packed[1] is results[1]
    assert packed[3][2][0] % 64 == 0                   # aligned offsets
    theirs.pack(0, [("d" * 64, 13, np.zeros((160, 160, 3), np.uint8), 1.0, (160, 160))])
    out = ours.unpack(1, packed)
    np.testing.assert_array_equal(out[0][2], small[0])
    np.testing.assert_array_equal(out[3][2], small[1])
    assert out[0][:2] == ("a" * 64, 10) and out[0][3:] == (1.0, (160, 160))
    theirs.pack(1, [("e" * 64, 14, np.full((160, 160, 3), 7, np.uint8), 1.0, (160, 160))])
    np.testing.assert_array_equal(out[0][2], small[0])  # a copy: the region may be reused
    assert out[0][2].flags.writeable


def test_nothing_packed_is_returned_as_is(arenas):
    ours, _ = arenas
    results = [BadImage("x")]
    assert ours.unpack(0, results) is results
