"""``facesortd doctor``: check what a service needs before (or while) it runs, say what to fix.

Each check yields ``Finding``s: ok, warn (works, but worse than it should) or fail (the daemon
will not work). The exit code is 1 when anything failed. Nothing is changed: the store is read
through a read-only SQLite connection, folders are probed with ``os.access``, the lock with a
shared non-blocking flock that is released at once.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import socket
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

from .config import Config, load_config
from .errors import ConfigError, FacesortdError

FAIL_FREE_BYTES = 512 << 20     # below this a store write or a file copy may fail
WARN_FREE_BYTES = 4 << 30
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
    if config.embedder.name == "dlib":
        yield _ok("device", "the dlib embedder runs on the CPU" +
                  (f" (CUDA present but unused: {', '.join(names)})" if names else ""))
        return
    from .embedders import resolve_device
    try:
        device = resolve_device(spec)
    except FacesortdError as exc:
        yield _fail("device", str(exc))
        return
    if device.type == "cuda":
        yield _ok("device", f"embedder.device {spec}: uses {device} ({names[device.index or 0]})")
    elif spec == "auto":
        yield _warn("device", "no CUDA device: the model runs on the CPU (several times slower)",
                    "for a GPU install the NVIDIA driver and a CUDA build of torch; check with "
                    "python -c 'import torch; print(torch.cuda.is_available())'")
    else:
        yield _ok("device", f"embedder.device {spec}" +
                  (f" (CUDA present but not used: {', '.join(names)}; set embedder.device: auto)"
                   if names else ""))


def check_weights(config: Config) -> Iterator[Finding]:
    cfg = config.embedder
    if cfg.name == "dlib":
        if importlib.util.find_spec("dlib") is None:
            yield _fail("weights", "the dlib embedder needs the dlib package",
                        "pip install '.[dlib]' into the service's virtual environment")
            return
        from .embedders.dlib import _model_files
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
        from .embedders.facenet import facenet_cache_file, hub_cache_file
        candidates = [facenet_cache_file(), hub_cache_file()]
    except ImportError as exc:
        yield _fail("weights", f"facenet-pytorch cannot be imported ({exc})", "pip install -e .")
        return
    found = [p for p in candidates if p.is_file()]
    if found:
        yield _ok("weights", f"VGGFace2 weights in {found[0]}")
    else:
        yield _warn("weights", "the VGGFace2 weights are not on this machine; the daemon downloads "
                    "them at start, which fails without internet",
                    f"put 20180402-114759-vggface2.pt into {candidates[0].parent}/ (of the user "
                    "the service runs as), or set embedder.weights")


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


def check_store(config: Config) -> Iterator[Finding]:
    db = config.state_dir / "facesortd.db"
    if not db.exists():
        yield _ok("store", "no store yet; `facesortd run` creates it")
        return
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        yield _fail("store", f"cannot read {db} ({exc})",
                    "check its owner and permissions; move it away to start a new store")
        return
    model = row[0] if row else None
    if model and not model.startswith(config.embedder.name):
        yield _fail("store", f"{db} holds vectors of {model}, but embedder.name is "
                    f"{config.embedder.name}: the daemon will refuse to start",
                    "use the embedder the store was made with, or a new state_dir to re-embed")
    else:
        yield _ok("store", f"{db}" + (f" (model {model})" if model else ""))


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
    lock = list(check_lock(config))
    running = any("held by" in f.message for f in lock)
    checks: list[Callable[[], Iterator[Finding]]] = [
        lambda: check_device(config), lambda: check_weights(config),
        lambda: check_folders(config), lambda: check_disk(config),
        lambda: check_tunables(config), lambda: iter(lock), lambda: check_store(config),
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
