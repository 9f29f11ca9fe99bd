"""``facesortd doctor``: check what a service needs before (or while) it runs, say what to fix.

Each check yields ``Finding``s: ok, warn (works, but worse than it should) or fail (the daemon
will not work). The exit code is 1 when anything failed. Nothing is changed: the store is read
through a read-only SQLite connection (never migrated: a store the next start repairs is judged on
an in-memory copy of its identities), folders are probed with ``os.access``, the lock with a shared
non-blocking flock that is released at once. Besides the setup, the store's people and the library
are checked against each other: faces on merged identities, broken ``merged_into``, photos outside
their person's folder, folders shared by two people, placed files that are not there any more.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import socket
import sqlite3
import stat
import urllib.parse
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

from facesortd.config import Config, load_config
from facesortd.errors import ConfigError, FacesortdError
from facesortd.library.layout import layout_fields
from facesortd.library.placer import Placed, audit
from facesortd.models.embedders import EmbedderChoice, choose_embedder
from facesortd.store import identity_rows
from facesortd.store.database import DB_NAME, decode_path
from facesortd.store.schema import SCHEMA_VERSION, schema_version

FAIL_FREE_BYTES = 512 << 20     # below this a store write or a file copy may fail
WARN_FREE_BYTES = 4 << 30
EXAMPLES = 3                    # files, folders or merges named in a finding
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


@dataclass(frozen=True)
class Finding:
    level: str      # ok | warn | fail
    topic: str
    message: str
    fix: str = ""


def _ok(topic: str, message: str) -> Finding:
    return Finding("ok", topic, message)


def _warn(topic: str, message: str, fix: str = "") -> Finding:
    return Finding("warn", topic, message, fix)


def _fail(topic: str, message: str, fix: str = "") -> Finding:
    return Finding("fail", topic, message, fix)


# -- checks ----------------------------------------------------------------------------------------

def check_device(config: Config) -> Iterator[Finding]:
    try:
        import torch
    except ImportError as exc:
        yield _fail("device", f"torch cannot be imported ({exc})", "reinstall: pip install -e .")
        return
    spec = config.embedder.device
    cuda = torch.cuda.is_available()
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    dlib = config.embedder.name == "dlib"
    if dlib and config.embedder.dlib_runtime == "dlib":
        yield _ok("device", "embedder.dlib_runtime: dlib runs dlib's ResNet on one CPU core" +
                  (f" (CUDA present but unused: {', '.join(names)})" if names else ""))
        return
    from facesortd.models.embedders import resolve_device
    try:
        device = resolve_device(spec)
    except FacesortdError as exc:
        yield _fail("device", str(exc))
        return
    if device.type == "cuda":
        yield _ok("device", f"embedder.device {spec}: uses {device} ({names[device.index or 0]})")
    elif spec == "auto" and dlib:
        yield _ok("device", "no CUDA device: dlib's ResNet runs on the CPU through torch "
                  "(embedder.dlib_runtime: torch, batched, every core)")
    elif spec == "auto":
        yield _warn("device", "no CUDA device: the model runs on the CPU (several times slower)",
                    "for a GPU install the NVIDIA driver and a CUDA build of torch; check with "
                    "python -c 'import torch; print(torch.cuda.is_available())'")
    else:
        yield _ok("device", f"embedder.device {spec}" +
                  (f" (CUDA present but not used: {', '.join(names)}; set embedder.device: auto)"
                   if names else ""))


def stored_model(config: Config) -> Optional[str]:
    """The model id the store's vectors were made by (None: no store, or no model yet)."""
    db = config.state_dir / DB_NAME
    if not db.exists():
        return None
    try:
        conn = _read_only(db)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None   # check_store says what is wrong with the file
    return row[0] if row else None


def check_embedder(config: Config, choice: EmbedderChoice) -> Iterator[Finding]:
    """Which model the daemon will run and why (``embedder.name: auto`` resolved)."""
    if choice.fell_back:
        yield _warn("embedder", f"{choice.name}: {choice.reason}",
                    "reinstall: pip install -e . (facenet-pytorch)")
    else:
        yield _ok("embedder", f"{choice.name}: {choice.reason}")


def check_weights(config: Config, choice: Optional[EmbedderChoice] = None) -> Iterator[Finding]:
    cfg = config.embedder
    if cfg.name == "dlib":
        if importlib.util.find_spec("dlib") is None:
            yield _fail("weights", "the dlib embedder needs the dlib package",
                        "pip install '.[dlib]' into the service's virtual environment")
            return
        from facesortd.models.dlib import _model_files
        try:
            files = _model_files()
        except FacesortdError as exc:
            yield _fail("weights", str(exc))
            return
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            yield _fail("weights", f"dlib model files missing: {', '.join(missing)}",
                        "pip install --force-reinstall face_recognition_models")
        else:
            yield _ok("weights", f"dlib models in {files[0].parent}")
        return
    if cfg.weights is not None:
        if Path(cfg.weights).is_file():
            yield _ok("weights", f"embedder.weights {cfg.weights}")
        else:
            yield _fail("weights", f"embedder.weights: {cfg.weights} is not a file",
                        "point it at 20180402-114759-vggface2.pt, or remove the key to use the cache")
        return
    try:
        from facesortd.models.facenet import facenet_cache_file, hub_cache_file
        candidates = [facenet_cache_file(), hub_cache_file()]
    except ImportError as exc:
        yield _fail("weights", f"facenet-pytorch cannot be imported ({exc})", "pip install -e .")
        return
    found = [p for p in candidates if p.is_file()]
    if found:
        yield _ok("weights", f"VGGFace2 weights in {found[0]}")
    elif choice is not None and choice.may_fall_back:
        yield _ok("weights", "the VGGFace2 weights are not on this machine: the daemon tries to "
                  "download them at start, and runs dlib (installed, offline) if that fails; put "
                  f"20180402-114759-vggface2.pt into {candidates[0].parent}/ for facenet")
    else:
        yield _warn("weights", "the VGGFace2 weights are not on this machine; the daemon downloads "
                    "them at start, which fails without internet",
                    f"put 20180402-114759-vggface2.pt into {candidates[0].parent}/ (of the user "
                    "the service runs as), or set embedder.weights, or install the offline dlib "
                    "model: pip install '.[dlib]'")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder(topic: str, path: Path, create_ok: bool) -> Iterator[Finding]:
    """A folder the daemon reads and writes (it moves files out of inboxes, into the library)."""
    if not path.exists():
        parent = _nearest_existing(path)
        if create_ok and os.access(parent, os.W_OK | os.X_OK):
            yield _ok(topic, f"{path} does not exist yet; it will be created (in {parent})")
        elif create_ok:
            yield _fail(topic, f"{path} does not exist and {parent} is not writable for this user",
                        f"mkdir -p {path} && chown <service user> {path}")
        else:
            yield _warn(topic, f"{path} does not exist; it is watched once it appears",
                        f"mkdir -p {path}")
        return
    if not path.is_dir():
        yield _fail(topic, f"{path} is not a folder", "point the config at a folder")
        return
    mode = os.access(path, os.R_OK | os.W_OK | os.X_OK)
    if not mode:
        st = path.stat()
        yield _fail(topic, f"{path} is not readable and writable for this user (uid {os.getuid()}; "
                    f"owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)})",
                    f"chown <service user> {path}, or add the user to the folder's group and "
                    f"chmod g+rwx {path}")
        return
    st = path.stat()
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        yield _warn(topic, f"{path} is writable by everyone ({stat.filemode(st.st_mode)})",
                    f"chmod o-w {path}")
    else:
        yield _ok(topic, f"{path} ({stat.filemode(st.st_mode)})")


def check_folders(config: Config) -> Iterator[Finding]:
    yield from check_folder("state_dir", config.state_dir, create_ok=True)
    yield from check_folder("library", config.library, create_ok=True)
    for i, inbox in enumerate(config.inboxes):
        yield from check_folder(f"inboxes[{i}]", inbox.path, create_ok=False)


def check_disk(config: Config) -> Iterator[Finding]:
    seen: set[int] = set()
    for name, path in (("state_dir", config.state_dir), ("library", config.library)):
        where = _nearest_existing(path)
        try:
            dev = where.stat().st_dev
            usage = shutil.disk_usage(where)
        except OSError as exc:
            yield _warn("disk", f"cannot read free space for {name} ({exc})")
            continue
        if dev in seen:
            continue
        seen.add(dev)
        free = f"{usage.free / 2**30:.1f} GiB free on the disk of {name} ({where})"
        if usage.free < FAIL_FREE_BYTES:
            yield _fail("disk", free, "free some space: the store and copied files need room")
        elif usage.free < WARN_FREE_BYTES:
            yield _warn("disk", free, "free some space soon")
        else:
            yield _ok("disk", free)


def check_tunables(config: Config, environ: Optional[dict] = None) -> Iterator[Finding]:
    value = (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_max=0" in value and "glibc.malloc.trim_threshold=" in value:
        yield _ok("GLIBC_TUNABLES", value)
    else:
        yield _warn("GLIBC_TUNABLES", "not set in this environment: on a CPU the model runs up to "
                    "several times slower (its buffers are re-mapped on every batch)",
                    f"export GLIBC_TUNABLES={TUNABLES} (systemd/facesortd.service sets it)")


def check_lock(config: Config) -> Iterator[Finding]:
    path = config.state_dir / "lock"
    if not path.exists():
        yield _ok("lock", "no daemon has used this state_dir yet")
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        yield _fail("lock", f"cannot open {path} ({exc.strerror})", f"chown <service user> {path}")
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            yield _ok("lock", "free: no daemon runs on this state_dir")
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            yield _ok("lock", f"held by a running facesortd (pid {holder})")
    finally:
        os.close(fd)


def _read_only(db: Path) -> sqlite3.Connection:
    """A connection that cannot write (a daemon may be using the store; doctor never migrates)."""
    uri = f"file:{urllib.parse.quote(str(db))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None)


def check_store(config: Config, daemon_running: bool = False) -> Iterator[Finding]:
    """The store's model, then its people and the library (one read snapshot for all)."""
    db = config.state_dir / DB_NAME
    if not db.exists():
        yield _ok("store", "no store yet; `facesortd run` creates it")
        return
    try:
        conn = _read_only(db)
    except sqlite3.Error as exc:
        yield _fail("store", f"cannot read {db} ({exc})",
                    "check its owner and permissions; move it away to start a new store")
        return
    try:
        conn.execute("BEGIN")   # every read below sees one state, whatever the daemon writes
        try:
            version = schema_version(conn)
            row = conn.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
        except sqlite3.Error as exc:
            yield _fail("store", f"cannot read {db} ({exc})",
                        "check its owner and permissions; move it away to start a new store")
            return
        model = row[0] if row else None
        if version > SCHEMA_VERSION:
            yield _fail("store", f"{db} has schema version {version}, newer than this facesortd "
                        f"knows ({SCHEMA_VERSION})", "upgrade facesortd")
            return
        if model and not model.startswith(config.embedder.name):
            yield _fail("store", f"{db} holds vectors of {model}, but embedder.name is "
                        f"{config.embedder.name}: the daemon will refuse to start",
                        "set embedder.name to auto (or the embedder the store was made with), or "
                        f"re-embed the store: facesortd migrate --to {config.embedder.name}")
        else:
            yield _ok("store", f"{db}" + (f" (model {model})" if model else ""))
        yield from check_store_contents(config, conn, version, daemon_running)
    finally:
        conn.close()


# -- the store's people and the library -------------------------------------------------------------

def check_store_contents(config: Config, conn: sqlite3.Connection, version: int,
                         daemon_running: bool) -> Iterator[Finding]:
    """People (``identity_rows.check``) and the library (``placer.audit``), read-only.

    A store below schema 6 is judged as the next start will leave it: its identities are repaired
    on an in-memory copy, never in the file.
    """
    problems = identity_rows.check(conn)
    repaired, plan = _repaired_identities(conn) if problems.total else (None, {})
    yield from _people_findings(conn, problems, version, plan)
    if version < 5:
        yield _ok("placement", f"store at schema {version}: the library is checked once the next "
                  "daemon start has migrated it")
        return
    placed = audit(config, conn, repaired)
    yield from _library_findings(config, conn, placed, daemon_running)


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Drop ``logger``'s records meanwhile (a repair on a copy is not a repair of the store)."""
    def drop(record: logging.LogRecord) -> bool:
        return False

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _repaired_identities(conn: sqlite3.Connection) -> tuple[list[tuple], dict[str, int]]:
    """The identities (id, name, merged_into) as schema 6's repair will leave them, and what it
    will change, worked out on an in-memory copy of the identities and of which hold faces."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        mem.execute("CREATE TABLE identities (id INTEGER PRIMARY KEY, name TEXT, "
                    "merged_into INTEGER, created_at REAL)")
        mem.execute("CREATE TABLE faces (identity_id INTEGER)")
        mem.executemany("INSERT INTO identities VALUES (?, ?, ?, ?)",
                        conn.execute("SELECT id, name, merged_into, created_at FROM identities"))
        mem.executemany("INSERT INTO faces VALUES (?)", conn.execute(
            "SELECT DISTINCT identity_id FROM faces WHERE identity_id IS NOT NULL"))
        with _quiet(identity_rows.log):
            plan = identity_rows.repair(mem)
        return mem.execute("SELECT id, name, merged_into FROM identities").fetchall(), plan
    finally:
        mem.close()


def _merge_examples(conn: sqlite3.Connection) -> list[str]:
    """A few broken ``merged_into`` paths as a person can follow them: cycles first, then the
    longest chains."""
    into = dict(conn.execute("SELECT id, merged_into FROM identities WHERE merged_into IS NOT NULL"))
    cycles, chains, seen = [], [], set()
    for start in sorted(into):
        path, node = [start], into[start]
        while node in into and node not in path:
            path.append(node)
            node = into[node]
        if node in path:
            ring = path[path.index(node):]
            if not seen & set(ring):
                seen.update(ring)
                cycles.append(ring + [ring[0]])
        elif len(path) > 1 and not any(into.get(a) == start for a in into):   # chain heads only
            chains.append(path + [node])
    chains.sort(key=len, reverse=True)
    return ([f"cycle {' -> '.join(map(str, c))}" for c in cycles[:EXAMPLES]] +
            [f"chain {' -> '.join(map(str, c))}" for c in chains[:max(0, EXAMPLES - len(cycles))]])


_REPAIRS = (   # identity_rows.repair's counts, as the fix says them
    ("revived", "merged identities that hold faces made people again: {n}"),
    ("cleared", "merges into no identity dropped: {n}"),
    ("cycles_broken", "cycles broken, the named (else the oldest) surviving: {n}"),
    ("chains_collapsed", "merges pointed straight at the live end of their chain: {n}"),
)


def _people_findings(conn: sqlite3.Connection, problems: identity_rows.Problems, version: int,
                     plan: dict[str, int]) -> Iterator[Finding]:
    live, merged = conn.execute("SELECT COUNT(*) - COUNT(merged_into), COUNT(merged_into) "
                                "FROM identities").fetchone()
    if not problems.total:
        yield _ok("people", f"{live} people ({merged} merged into others): every face is on a live "
                  "identity, every merge points straight at one" +
                  (f" (store at schema {version}: the next daemon start brings it to "
                   f"{SCHEMA_VERSION})" if version < SCHEMA_VERSION else ""))
        return
    if version < 6:
        level = _warn
        repairs = "; ".join(text.format(n=plan[key]) for key, text in _REPAIRS if plan.get(key))
        fix = (f"the store is at schema {version}: the next daemon start (or `facesortd run "
               f"--once`) repairs it ({repairs}) and the files follow; doctor changes nothing")
    else:
        level = _fail
        fix = ("the store's triggers should make this impossible at schema 6: report a bug with "
               "this output (and keep a copy of the state_dir)")
    p = problems
    held = p.faces_on_merged or p.merged_holding_faces
    if held:
        yield level("people", f"{_n(p.faces_on_merged, 'face')} sit on "
                    f"{_n(p.merged_holding_faces, 'merged identity', 'merged identities')}: the "
                    "review page shows none of them, and their photos go to the folder of the "
                    "identity the merge points at", fix)
    broken = p.chained + p.in_cycles + p.dangling
    if broken:
        examples = _merge_examples(conn)
        yield level("people", f"merged_into is broken for {_n(broken, 'identity', 'identities')}: "
                    f"{p.chained} chained (pointing at a merged identity), {p.in_cycles} on "
                    f"cycles, {p.dangling} dangling (pointing at itself or at no identity)" +
                    (f"; e.g. {'; '.join(examples)}" if examples else ""),
                    "the same as above" if held else fix)


def _n(count: int, one: str, many: str = "") -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


def _rel(config: Config, path: Path) -> str:
    try:
        return str(path.relative_to(config.library))
    except ValueError:
        return str(path)


def _more(items: list, total: int) -> str:
    return ", ".join(items) + (f" and {total - len(items)} more" if total > len(items) else "")


def _library_findings(config: Config, conn: sqlite3.Connection, placed: list[Placed],
                      daemon_running: bool) -> Iterator[Finding]:
    there = [p for p in placed if p.exists]
    follow = ("the running daemon moves them at its next placement (after the next change; a "
              "restart places at once)" if daemon_running else
              "start the daemon or `facesortd run --once`: files follow at the next placement "
              "(journaled; `facesortd undo` puts them back)")
    misplaced = [p for p in there if not p.in_place]
    if misplaced:
        examples = [f"{_rel(config, p.path)} (wanted in {_rel(config, p.wanted.parent)}/)"
                    for p in misplaced[:EXAMPLES]]
        yield _warn("placement", f"{len(misplaced)} of {len(placed)} placed photo(s) are not in "
                    f"the folder the placer wants for them now: {_more(examples, len(misplaced))}",
                    follow)
    else:
        yield _ok("placement", f"{len(placed)} placed photo(s), each in its person's folder"
                  if placed else "no photos placed yet")
    yield from _shared_folders(config, there, follow)
    missing = [p for p in placed if not p.exists]
    if missing:
        found = _find_moved(config, conn, missing[:EXAMPLES])
        owners = {p.wanted.parent: p.identity for p in placed}
        examples = []
        for p in missing[:EXAMPLES]:
            where = found.get(p.image_id)
            if where is None:
                examples.append(f"{_rel(config, p.path)} (not found in the library)")
                continue
            other = owners.get(where.parent)
            whose = (", the folder of another person" if other is not None and
                     other != p.identity else "")
            examples.append(f"{_rel(config, p.path)} (now at {_rel(config, where)}{whose})")
        yield _warn("placed files", f"{len(missing)} placed photo(s) are not where the placer put "
                    f"them: {_more(examples, len(missing))}",
                    "facesortd leaves a placed photo that was moved by hand alone and stops "
                    "sorting it (the next placement marks it gone): move it back to keep it "
                    "sorted; to give a photo to another person, correct its face on the review "
                    "page instead of moving the file")


def _shared_folders(config: Config, there: list[Placed], fix: str) -> Iterator[Finding]:
    """Library folders that hold the photos of two or more people (a layout with a folder per
    person only: with ``{identity}`` in the file name one folder is shared by design)."""
    if "identity" not in layout_fields(os.path.dirname(config.placement.layout)):
        return
    people: dict[Path, set[int]] = defaultdict(set)
    photos: dict[Path, int] = defaultdict(int)
    for p in there:
        photos[p.path.parent] += 1
        if p.identity is not None:
            people[p.path.parent].add(p.identity)
    shared = sorted((f for f in people if len(people[f]) > 1), key=lambda f: -photos[f])
    if shared:
        examples = [f"{_rel(config, f)} ({photos[f]} photos of {len(people[f])} people)"
                    for f in shared[:EXAMPLES]]
        yield _warn("person folders", f"{len(shared)} folder(s) hold the photos of more than one "
                    f"person: {_more(examples, len(shared))}", fix)
    else:
        yield _ok("person folders", f"one person per folder ({len(people)} folder(s) of people)")


def _find_moved(config: Config, conn: sqlite3.Connection, missing: list[Placed]) -> dict[int, Path]:
    """Where in the library the files of ``missing`` went: a file no placement knows, with the
    same size and sha256 (hashing only files of a matching size)."""
    from facesortd.fsops import sha256_of

    wanted = {}
    for p in missing:
        row = conn.execute("SELECT size, sha256 FROM images WHERE id = ?", (p.image_id,)).fetchone()
        if row and row[1]:
            wanted[p.image_id] = (row[0], row[1])
    sizes = {size for size, _ in wanted.values()}
    known = {decode_path(r[0]) for r in conn.execute("SELECT path FROM placements")}
    found: dict[int, Path] = {}
    for folder, _, names in os.walk(config.library):
        for name in names:
            path = Path(folder) / name
            try:
                if path in known or path.is_symlink() or path.stat().st_size not in sizes:
                    continue
                sha = sha256_of(path)
            except OSError:
                continue
            for image_id, (_size, want) in wanted.items():
                if sha == want and image_id not in found:
                    found[image_id] = path
    return found


def check_web(config: Config, daemon_running: bool) -> Iterator[Finding]:
    web = config.web
    if not web.enabled:
        yield _ok("web", "disabled")
        return
    if daemon_running:
        yield _ok("web", f"served by the running daemon on {web.host}:{web.port}")
        return
    family = socket.AF_INET6 if ":" in web.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((web.host, web.port))
        yield _ok("web", f"{web.host}:{web.port} is free" + ("" if web.is_loopback else
                                                             " (off loopback, token set)"))
    except OSError as exc:
        yield _fail("web", f"cannot listen on {web.host}:{web.port} ({exc.strerror or exc})",
                    "set web.port to a free port, or stop what uses it")


# -- running them ----------------------------------------------------------------------------------

def run_checks(config: Config) -> list[Finding]:
    findings = [_ok("config", f"{config.source}: valid")]
    try:
        choice = choose_embedder(config.embedder, stored_model(config))
    except FacesortdError as exc:
        findings.append(_fail("embedder", str(exc)))
        choice = EmbedderChoice("facenet", "unknown", may_fall_back=True)
    findings.extend(check_embedder(config, choice))
    # the checks below see the model that runs (embedder.name: auto resolved)
    config = config.model_copy(update={
        "embedder": config.embedder.model_copy(update={"name": choice.name})})
    lock = list(check_lock(config))
    running = any("held by" in f.message for f in lock)
    checks: list[Callable[[], Iterator[Finding]]] = [
        lambda: check_device(config), lambda: check_weights(config, choice),
        lambda: check_folders(config), lambda: check_disk(config),
        lambda: check_tunables(config), lambda: iter(lock),
        lambda: check_store(config, running),
        lambda: check_web(config, running)]
    for check in checks:
        try:
            findings.extend(check())
        except Exception as exc:  # a check that breaks is itself a finding, not a crash
            findings.append(_fail("doctor", f"a check failed: {type(exc).__name__}: {exc}"))
    return findings


def report(findings: list[Finding], out: TextIO) -> int:
    """Print the findings with their fixes; 1 when any failed, else 0."""
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for f in findings:
        print(f"{marks[f.level]} {f.topic:<15} {f.message}", file=out)
        if f.fix and f.level != "ok":
            print(f"     {'':<15} fix: {f.fix}", file=out)
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    print(f"{failed} problem(s), {warned} warning(s)", file=out)
    return 1 if failed else 0


def doctor(config_path: Optional[Path], out: TextIO) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        findings = [_fail("config", p) for p in exc.problems]
        print(f"config {exc.path}:", file=out)
        return report(findings, out)
    return report(run_checks(config), out)
