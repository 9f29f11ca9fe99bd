"""The command line. Every user error becomes one message and an exit code here, in ``main``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from facesortd import __version__
from facesortd.config import Config, load_config
from facesortd.errors import ConfigError, FacesortdError


def _setup_logging(level: str) -> None:
    # Under systemd (JOURNAL_STREAM set) journald adds the time; elsewhere we do.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr,
                        force=True)
    if os.environ.get("JOURNAL_STREAM"):   # each line carries its level for journalctl -p
        from facesortd.app.supervisor import JournalFormatter
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JournalFormatter(fmt))


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"# {config.source}: OK")
    print(config.to_yaml(), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from facesortd.app.daemon import Daemon

    config = _config(args)
    _setup_logging(config.log_level)
    daemon = Daemon(config, dry_run=args.dry_run)
    daemon.install_signal_handlers()
    if args.once:
        counts = daemon.run_once()
        for op in daemon.planned if args.dry_run else ():
            print(f"would {op.describe()}")
        print(json.dumps(counts, indent=2, sort_keys=True))
    else:
        daemon.run_forever()
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    from facesortd.app.commands import undo

    config = _config(args)
    _setup_logging(config.log_level)
    ops = undo(config, args.last, args.since, dry_run=args.dry_run)
    for op in ops:
        print(f"{'would ' if args.dry_run else ''}{op.describe()}")
    print(f"{len(ops)} file operation(s){' planned' if args.dry_run else ''}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from facesortd.store.database import Store

    config = _config(args)
    if not (config.state_dir / "facesortd.db").exists():
        raise FacesortdError(f"no store yet in {config.state_dir}: run `facesortd run` first")
    with Store.open(config.state_dir, load_vectors=False) as store:
        counts = store.counts()
        staged, last = store.staged_models(), store.meta("last_migration")
    if staged or last:   # facesortd migrate: one left unfinished (or a dry run), the last one done
        last = json.loads(last) if last else None
        counts["migration"] = {
            "staged": {m: f"{n} of {counts['faces'] + counts['faces_rejected']} faces"
                       for m, n in staged.items()},
            "last": last and {k: last.get(k) for k in ("model_before", "model_after",
                                                       "finished_at", "faces_reembedded")}}
    from facesortd.models.embedders import choose_embedder
    choice, stored = choose_embedder(config.embedder, counts.get("model_id")), counts.get("model_id")
    counts["embedder"] = {"name": choice.name, "chosen": choice.reason}
    if stored and not stored.startswith(choice.name + "-"):
        counts["embedder"]["chosen"] += (f"; but the store holds vectors of {stored}: the daemon "
                                         "refuses to start (set embedder.name: auto)")
    from facesortd.telemetry import format_snapshot, read_snapshot
    live = read_snapshot(config.state_dir)  # the running daemon's figures (as on /metrics), or None
    if args.json:
        print(json.dumps(dict(counts, daemon=live), indent=2, sort_keys=True))
    else:
        for key, value in counts.items():
            if key == "embedder":
                value = f"{value['name']} ({value['chosen']})"
            elif key == "migration":
                parts = [f"staged for {m}: {n} (run facesortd migrate --to {m.split('-')[0]} to "
                         "finish)" for m, n in value["staged"].items()]
                if value["last"]:
                    last = value["last"]
                    parts.append(f"last: {last['model_before']} -> {last['model_after']} at "
                                 f"{last['finished_at']}, {last['faces_reembedded']} faces")
                value = "; ".join(parts)
            elif key == "images_removed":   # library/scan.py
                value = f"{value} (photos deleted from the library: never placed again)"
            elif isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "none"
            print(f"{key:>16}: {value}")
        print(format_snapshot(live), end="")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from facesortd.app.doctor import doctor

    return doctor(args.config, sys.stdout)


def cmd_bench(args: argparse.Namespace) -> int:
    from facesortd.bench.ingest import bench_ingest

    _setup_logging("warning")
    result = bench_ingest(mode=args.mode, embedder=args.embedder, images=args.images,
                          count=args.count, batch_size=args.batch_size, device=args.device,
                          precision=args.precision, repeats=args.repeats,
                          old_tool=args.old_tool, workers=args.workers,
                          decode_processes=args.decode_processes, ceiling=args.ceiling,
                          cuda_graphs=args.cuda_graphs, fold=args.fold,
                          dlib_runtime=args.dlib_runtime, run_once=args.run_once)
    print(json.dumps(result, indent=2))
    return 0


def cmd_recluster(args: argparse.Namespace) -> int:
    from facesortd.app.commands import recluster

    config = _config(args)
    _setup_logging(config.log_level)
    print(json.dumps(recluster(config), indent=2, sort_keys=True))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from facesortd.app.migrate import migrate

    config = _config(args)
    _setup_logging(config.log_level)
    report = migrate(config, args.to, weights=args.weights, dry_run=args.dry_run)
    for key in ("message", "note"):     # what to do next, where a person reads it
        if report.get(key):
            print(f"facesortd migrate: {report[key]}", file=sys.stderr)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def cmd_people(args: argparse.Namespace) -> int:
    from facesortd.app.backup import people_export, people_import

    config = _config(args)
    _setup_logging(config.log_level)
    if args.people == "export":
        report = people_export(config, args.file, dry_run=args.dry_run)
    else:
        report = people_import(config, args.file, dry_run=args.dry_run)
        missing = len(report["photos_not_in_store"]), len(report["faces_not_found"])
        if any(missing) or report["people_unmatched"]:
            print(f"facesortd people import: {missing[0]} photo(s) of the file are not in this store, "
                  f"{missing[1]} face(s) not found on photos it has, "
                  f"{len(report['people_unmatched'])} person(s) with no face here (listed in the "
                  "report)", file=sys.stderr)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from facesortd.app.export import export_people

    config = _config(args)
    _setup_logging(config.log_level)
    report = export_people(config, args.people, args.to, layout=args.layout, action=args.action,
                           dry_run=args.dry_run)
    if not args.verbose:
        report.pop("files")
    print(json.dumps(report, indent=2, sort_keys=True))
    if report["missing"] or report["failed"]:
        print(f"facesortd export: {len(report['missing'])} photo(s) not found where the store says "
              f"they are, {len(report['failed'])} could not be exported (listed in the report)",
              file=sys.stderr)
    return 0


def cmd_adopt(args: argparse.Namespace) -> int:
    from facesortd.app.adopt import adopt, format_report

    config = _config(args)
    _setup_logging(config.log_level if args.verbose else "warning")
    if not args.verbose:   # each unreadable photo is in the report, not logged as "quarantined"
        logging.getLogger("facesortd.pipeline").setLevel(logging.ERROR)
    report = adopt(config, args.dir, do_import=args.do_import, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_report(report), end="")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from facesortd.app.review import serve

    config = _config(args)
    _setup_logging(config.log_level)
    serve(config, port=args.port)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from facesortd.bench.evaluate import disagreement, evaluate

    _setup_logging("warning")
    figures = evaluate(args.dataset, mode=args.mode, embedder=args.embedder, stream=args.stream,
                       seed=args.seed, eps=args.eps, keep=args.keep, from_run_dir=args.from_run,
                       dlib_runtime=args.dlib_runtime)
    print(json.dumps(figures, indent=2))
    problem = disagreement(figures)
    if problem:   # the figures are still printed: they say how far apart the two are
        print(f"facesortd eval: {problem}", file=sys.stderr)
        return 1
    return 0


def cmd_bench_detect(args: argparse.Namespace) -> int:
    from facesortd.bench.detect import bench_detect

    _setup_logging("warning")
    result = bench_detect(images=args.images, count=args.count, batch_size=args.batch_size,
                          device=args.device, precision=args.precision, repeats=args.repeats,
                          max_side_px=args.max_side_px, stock=args.stock)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench_cluster(args: argparse.Namespace) -> int:
    from facesortd.bench.cluster import bench_cluster

    _setup_logging("warning")
    figures = bench_cluster(args.n, args.dim, args.against, out=lambda line: print(line, file=sys.stderr))
    print(json.dumps(figures, indent=2, default=str))
    return 0


def cmd_bench_web(args: argparse.Namespace) -> int:
    from facesortd.bench.web import bench_web

    _setup_logging("warning")
    figures = bench_web(faces=args.faces, repeats=args.repeats, dim=args.dim, seed=args.seed,
                        photo=args.photo, keep=args.keep)
    print(json.dumps(figures, indent=2))
    return 0


def cmd_bench_library(args: argparse.Namespace) -> int:
    from facesortd.bench.library import bench_library

    if args.files < 1 or args.people < 1 or args.moves < 1 or args.moves * 3 > args.files:
        raise FacesortdError("bench library: --files, --people and --moves must be at least 1, "
                             "and --moves at most a third of --files")
    if args.dry_run:
        print(json.dumps({"would_build": {"files": args.files, "people": args.people,
                                          "hand_placed": args.hand, "moves": args.moves,
                                          "in": str(args.root or "a temp folder")}}, indent=2))
        return 0
    _setup_logging("warning")
    figures = bench_library(files=args.files, people=args.people, moves=args.moves,
                            hand=args.hand, repeats=args.repeats, seed=args.seed, root=args.root,
                            keep=args.keep, out=lambda line: print(line, file=sys.stderr))
    print(json.dumps(figures, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facesortd", description="Sort photos into one folder per person, continuously.")
    parser.add_argument("--version", action="version", version=f"facesortd {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None,
                        help="config file (default: $FACESORTD_CONFIG, then ./facesortd.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run the service (or --once and exit)")
    p.add_argument("--once", action="store_true", help="ingest what is in the inboxes, then exit")
    p.add_argument("--dry-run", action="store_true",
                   help="print the file operations it would do; move, copy or link nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("undo", parents=[common],
                       help="put placed files back in their inbox (the daemon must be stopped)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, metavar="N", help="the last N placement operations")
    which.add_argument("--since", metavar="T",
                       help="operations since T: unix seconds, 2024-05-01[T13:00], or 30m/2h/1d ago")
    p.add_argument("--dry-run", action="store_true", help="print what it would do")
    p.set_defaults(func=cmd_undo)

    p = sub.add_parser("check-config", parents=[common],
                       help="validate the config; print every problem (exit 2) or the resolved config")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("status", parents=[common], help="counts from the store")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("doctor", parents=[common],
                       help="check config, device, weights, folders, disk, lock; say what to fix")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("bench", help="benchmarks that print JSON figures")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bench.add_parser("ingest", help="pipeline images/s against the bare model, same run")
    b.add_argument("--mode", choices=["aligned", "detect"], default="aligned")
    b.add_argument("--embedder", choices=["facenet", "dlib"], default="facenet")
    b.add_argument("--images", type=Path, default=None,
                   help="folder of images to replicate (default: synthetic face-sized JPEGs)")
    b.add_argument("--count", type=int, default=256, help="number of files to ingest per run")
    b.add_argument("--workers", type=int, default=None,
                   help="decoding threads (default: 2 on CPU, up to 4 on a GPU)")
    b.add_argument("--decode-processes", type=int, default=None, metavar="N",
                   help="decode in N worker processes (0: in threads; default: as "
                        "embedder.decode_processes: auto = processes on a GPU, threads on a CPU)")
    b.add_argument("--ceiling", action="store_true",
                   help="the pipeline's own limit: a benchmark-only model whose forward pass "
                        "costs ~nothing replaces the embedder (no bare model, no old tool)")
    b.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="on CUDA (facenet, dlib via torch): embed eagerly (embedder.cuda_graphs: false)")
    b.add_argument("--no-fold", dest="fold", action="store_false",
                   help="facenet on CPU: the model as built, unfolded (embedder.fold: false)")
    b.add_argument("--dlib-runtime", choices=["torch", "dlib"], default="torch",
                   help="dlib: who runs its ResNet in the pipeline runs (embedder.dlib_runtime); "
                        "either way --embedder dlib also compares both runtimes on the same chips")
    b.add_argument("--run-once", action="store_true",
                   help="dlib, with --images: also time 'facesortd run --once' on fresh copies of "
                        "--images in --mode with each dlib runtime (end to end, one run)")
    b.add_argument("--repeats", type=int, default=5, help="runs (median reported)")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--device", default="auto")
    b.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    b.add_argument("--no-old-tool", dest="old_tool", action="store_false",
                   help="skip the old tool's way (fp32, batch 64, NCHW, no overlap) baseline")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("detect", help="detect mode on 12-megapixel camera JPEGs, with breakdown")
    b.add_argument("--images", type=Path, required=True,
                   help="folder of photos, upscaled to 4000x3000 JPEGs for the run")
    b.add_argument("--count", type=int, default=24, help="number of photos per run")
    b.add_argument("--repeats", type=int, default=3, help="runs (median reported)")
    b.add_argument("--max-side-px", type=int, default=None,
                   help="detector.max_side_px (default: the config default)")
    b.add_argument("--no-stock", dest="stock", action="store_false",
                   help="skip the detector-alone comparison with facenet-pytorch's MTCNN.detect")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--device", default="auto")
    b.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    b.set_defaults(func=cmd_bench_detect)
    b = bench.add_parser("cluster", help="recluster and incremental assignment on synthetic faces")
    b.add_argument("--n", type=int, nargs="*", default=[10_000, 30_000, 100_000],
                   help="library sizes for a full recluster")
    b.add_argument("--against", type=int, nargs="*", default=[100_000, 1_000_000],
                   help="library sizes to assign a 64-face batch against")
    b.add_argument("--dim", type=int, default=512)
    b.set_defaults(func=cmd_bench_cluster)
    b = bench.add_parser("web", help="review pages' render times over a 100k-face store")
    b.add_argument("--faces", type=int, default=100_000, help="faces in the store (at least 2000)")
    b.add_argument("--repeats", type=int, default=20,
                   help="timed requests per route, after a warm-up")
    b.add_argument("--dim", type=int, default=512, help="vector size (512: facenet, 128: dlib)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--photo", type=Path, default=None,
                   help="photo for the timed thumbnail (default: largest in ../shared/data/faces)")
    b.add_argument("--keep", type=Path, default=None,
                   help="build the store in this new folder and keep it")
    b.set_defaults(func=cmd_bench_web)

    b = bench.add_parser("library", help="library scans (issue 19) over 100k placed files")
    b.add_argument("--files", type=int, default=100_000, help="placed files in the library")
    b.add_argument("--people", type=int, default=1000, help="person folders")
    b.add_argument("--moves", type=int, default=100, help="photos dragged per round")
    b.add_argument("--hand", type=int, default=1000, help="files put into the library by hand")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--root", type=Path, default=None, help="build in a new folder under this one")
    b.add_argument("--keep", action="store_true", help="keep what was built")
    b.add_argument("--dry-run", action="store_true", help="say what would be built, build nothing")
    b.set_defaults(func=cmd_bench_library)

    p = sub.add_parser("recluster", parents=[common],
                       help="cluster every face again (asks the running daemon, if there is one)")
    p.set_defaults(func=cmd_recluster)

    p = sub.add_parser(
        "migrate", parents=[common], help="re-embed every face with another model, keep the people",
        description="Re-embed every stored face with another model and switch the store to it: "
                    "boxes, face ids, names, pins, 'not this person' and rejections stay; then a "
                    "recluster with the new model's eps. Resumable: run it again after an "
                    "interruption. The daemon must be stopped. Prints a JSON report.")
    p.add_argument("--to", required=True, choices=["facenet", "dlib"], help="the model to move to")
    p.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="facenet: the VGGFace2 state dict (default: embedder.weights, then the "
                        "torch caches, then the download)")
    p.add_argument("--dry-run", action="store_true",
                   help="embed and report what would change, without switching the store")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "export", parents=[common], help="copy (or link) every photo of chosen people to a folder",
        description="Every photo of the people named, one folder per person (per-person) or one "
                    "folder with the person's name before each file name (single), and a "
                    "manifest.csv (photo, person, source, sha256). A photo with several chosen "
                    "people goes to each. Nothing is replaced (a taken name gets name_1.jpg) and "
                    "nothing in the library is moved or changed.")
    p.add_argument("--people", nargs="+", required=True, metavar="NAME|#ID",
                   help="people by name (as on the review page) or by id (#12)")
    p.add_argument("--to", type=Path, required=True, metavar="DIR",
                   help="target folder (made if missing; outside the library and the inboxes)")
    p.add_argument("--layout", choices=["per-person", "single"], default="per-person")
    p.add_argument("--action", choices=["copy", "hardlink", "symlink"], default="copy")
    p.add_argument("--dry-run", action="store_true", help="report what it would write; write nothing")
    p.add_argument("--verbose", action="store_true", help="list every file in the report")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "people", help="back up or restore the people and every correction (JSON, by content)",
        description="export: write every decision (names, merges, splits, pinned and confirmed "
                    "faces, hidden people, 'not this person', rejected faces, dismissed "
                    "suggestions) to a new JSON file keyed by photo sha256 + face box. import: "
                    "apply such a file to a store holding the same photos (another machine, a "
                    "rebuilt state folder, another model after `facesortd migrate`) in one "
                    "transaction, then move the files; reports what could not be matched.")
    people = p.add_subparsers(dest="people", required=True, metavar="ACTION")
    for action, text in (("export", "write the people file (never replaces one)"),
                         ("import", "apply a people file (the daemon must be stopped)")):
        a = people.add_parser(action, parents=[common], help=text)
        a.add_argument("file", type=Path, metavar="FILE.json")
        a.add_argument("--dry-run", action="store_true",
                       help="report what it would do (import: and the file operations); change nothing")
        a.set_defaults(func=cmd_people)

    p = sub.add_parser(
        "adopt", parents=[common], help="learn the people of folders a person already sorted",
        description="DIR holds one folder per person (DIR/<Person Name>/..., subfolders are that "
                    "person's too). Each photo with exactly one face becomes a pinned face of that "
                    "person (an existing person with that folder name is reused); photos with "
                    "several faces or none are reported, not guessed. Inside the library the "
                    "photos become placed files where they are (they follow their person from "
                    "then on); outside it they stay where they are for good; --import copies them "
                    "into the library. Nothing in DIR is moved, renamed or changed; content "
                    "already in the store is skipped (running it twice adds nothing). The daemon "
                    "must be stopped.")
    p.add_argument("dir", type=Path, metavar="DIR", help="the folder of person folders")
    p.add_argument("--import", dest="do_import", action="store_true",
                   help="copy the photos into their person's folder in the library")
    p.add_argument("--dry-run", action="store_true",
                   help="read every photo and report what it would do; write nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--verbose", action="store_true", help="log each photo as it is read")
    p.set_defaults(func=cmd_adopt)

    p = sub.add_parser("web", parents=[common],
                       help="serve the review page alone, against the store (no daemon running)")
    p.add_argument("--port", type=int, default=None, help="listen here instead of web.port")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser(
        "eval", help="score the real pipeline on folders of labelled photos (JSON)",
        description="Sort labelled photos with the real daemon and score the store's people and "
                    "the library folders (JSON on stdout). Exits 1, after the JSON, when a photo "
                    "is not in its person's folder or missing from the library.")
    p.add_argument("dataset", type=Path, nargs="+", metavar="DATASET_DIR",
                   help="a folder with one folder of photos per person")
    p.add_argument("--stream", action="store_true",
                   help="feed the photos in random micro-batches to a running daemon")
    p.add_argument("--seed", type=int, default=0, help="order of --stream arrival")
    p.add_argument("--embedder", choices=["facenet", "dlib"], default="dlib")
    p.add_argument("--mode", choices=["detect", "aligned"], default="detect")
    p.add_argument("--dlib-runtime", choices=["torch", "dlib"], default="torch",
                   help="dlib: who runs its ResNet (embedder.dlib_runtime); the vectors are the same")
    p.add_argument("--eps", type=float, default=None, help="clustering.eps (default: auto)")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the run's state and library in this new folder")
    p.add_argument("--from-run", type=Path, default=None, metavar="DIR",
                   help="no embedding: sort the photos of an earlier --keep DIR run (same "
                        "DATASET_DIRs) again, its stored faces through the real identity service "
                        "and placer in the order it recorded them, into a new state and library; "
                        "DIR is only read (photos are hard-linked or copied). For other --eps "
                        "values; --mode and --embedder are the kept run's")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"facesortd: {exc}", file=sys.stderr)
        return exc.exit_code
    except FacesortdError as exc:
        print(f"facesortd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
