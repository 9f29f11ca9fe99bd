"""``facesortd bench library`` on a small library: the figures are there and every scan it timed
learned what it was timing (the moved photos' rows follow them), so a broken scan cannot give a
fast figure."""

from __future__ import annotations

import json

from facesortd.cli import main


def test_bench_library_small(tmp_path, capsys):
    assert main(["bench", "library", "--files", "600", "--people", "12", "--moves", "20",
                 "--hand", "300", "--repeats", "1", "--root", str(tmp_path)]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["full_scan_unchanged_files_seen"] == 900
    rounds = figures["full_scan_after_moves"]
    assert [r["renamed"] for r in rounds] == [False, False, True, True]
    assert all(r["learned_moves"] == r["moved"] == 20 and r["rows_follow_the_files"] for r in rounds)
    assert all(r["hashed"] >= 20 for r in rounds)
    assert figures["event_paths_rows_follow"] and figures["event_paths_scan_learned"] == 5
    assert list(tmp_path.iterdir()) == []   # nothing kept


def test_bench_library_dry_run_and_bad_input(tmp_path, capsys):
    assert main(["bench", "library", "--files", "600", "--dry-run", "--root", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["would_build"]["files"] == 600
    assert list(tmp_path.iterdir()) == []
    assert main(["bench", "library", "--files", "10", "--moves", "9"]) != 0
    assert "at most a third" in capsys.readouterr().err
