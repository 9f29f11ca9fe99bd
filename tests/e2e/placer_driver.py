"""A driver the crash test (test_crash.py) runs and kills: ``placer_driver.py CONFIG ROUND`` replays
the journal, records every inbox photo not yet recorded (face i of file n belongs to identity n % 7;
every 5th file has no face; duplicates point at their original), renames every identity after the
round number so that placed files must follow, then syncs with a scan of the library first (what
a person moved there meanwhile is learned, as by ``run --once``). Each phase is appended to
``rounds.log`` beside the state folder, so the test knows where each kill landed.
``placer_driver.py CONFIG ROUND quarantine`` instead sets every inbox file aside as broken, as the
pipeline does (an 'error' row, then ``Placer.quarantine``). The files are recorded without the
model, by tests/fake_ingest.py (the placement tests' ``fake_ingest`` fixture).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/: fake_ingest

from fake_ingest import fabricate, new_identity, open_store  # noqa: E402


def main(argv: Sequence[str]) -> int:
    from facesortd.config import load_config
    from facesortd.library.placer import Placer
    from facesortd.people.corrections import from_library

    config, round_no = load_config(argv[0]), int(argv[1])
    log = open(config.state_dir.parent / "rounds.log", "a", buffering=1)
    log.write(f"{round_no} start\n")
    store = open_store(config)
    placer = Placer(config, store, learn=from_library)   # what a person did there is learned
    repaired = placer.replay()
    log.write(f"{round_no} replayed {sum(repaired.values())}\n")
    if argv[2:] == ["quarantine"]:
        quarantine_all(store, placer, config.inboxes[0].path, log, round_no)
        store.close()
        return 0
    with store.read() as conn:
        people = [r[0] for r in conn.execute("SELECT id FROM identities ORDER BY id")]
        known = {r[0] for r in conn.execute("SELECT path FROM images WHERE status != 'pending'")}
    while len(people) < 7:
        people.append(new_identity(store))
    inbox = config.inboxes[0].path
    photos = set(config.watch.extensions)   # companions (RAW twins, sidecars) travel with these
    for n, path in enumerate(sorted(p for p in inbox.rglob("*") if p.is_file())):
        if str(path) in known or path.suffix.lower() not in photos:
            continue
        ids = [] if n % 5 == 0 else [people[n % 7]] + ([None] if n % 3 == 0 else [])
        fabricate(store, path, inbox, ids)
    with store.transaction() as conn:   # every placed file must follow its person's new name
        conn.executemany("UPDATE identities SET name = ? WHERE id = ?",
                         [(f"Person {i} round {round_no}", p) for i, p in enumerate(people)])
    log.write(f"{round_no} syncing {time.time()}\n")
    ops = placer.sync(scan=True)   # as run --once: the library scanned first
    log.write(f"{round_no} synced {time.time()} {len(ops)}\n")
    store.close()
    return 0


def quarantine_all(store, placer, inbox: Path, log, round_no: int) -> None:
    """Record every file in ``inbox`` as broken and set it aside, as the pipeline does."""
    log.write(f"{round_no} syncing {time.time()}\n")
    n = 0
    for path in sorted(p for p in inbox.rglob("*") if p.is_file()):
        st = path.stat()
        image_id = store.record_error(path, inbox, None, st.st_size, st.st_mtime_ns,
                                      f"broken for the test ({path.name})")
        placer.quarantine(image_id, path, f"broken for the test ({path.name})")
        n += 1
    log.write(f"{round_no} synced {time.time()} {n}\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
