"""The library: the only writer into it. The placer makes it agree with the store (layout,
journaled moves, undo), the journal repairs what a crash interrupted."""

from facesortd.library.loop import PlacerLoop
from facesortd.library.placer import Placer, audit, parse_since

__all__ = ["Placer", "PlacerLoop", "audit", "parse_since"]
