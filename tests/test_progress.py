"""The run --once progress line: only on a terminal, cleared by log lines, final figures kept."""

from __future__ import annotations

import io
import logging
import time

from facesortd.app.progress import CLEAR, Progress, format_line


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_format_line():
    assert format_line(0, 0, 0.0) == "0/0 files  0.0/s"
    assert format_line(250, 1000, 10.0) == "250/1000 files (25%)  25.0/s  ETA 30s"
    assert format_line(100, 10100, 1.0).endswith("ETA 1m40s")
    assert format_line(5, 3, 1.0).startswith("5/5 files (100%)")


def test_silent_when_not_a_terminal():
    out = io.StringIO()
    with Progress(lambda: (1, 2), stream=out, interval=0.01, delay=0):
        time.sleep(0.05)
    assert out.getvalue() == ""


def test_draws_on_a_terminal_and_log_lines_clear_it():
    out = Tty()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    counts = [0]
    try:
        with Progress(lambda: (counts[0], 40), stream=out, interval=0.01, delay=0):
            time.sleep(0.05)
            logging.getLogger("facesortd.test").warning("a log line")
            counts[0] = 40
            time.sleep(0.05)
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert CLEAR + "0/40 files" in text
    assert CLEAR + "a log line\n" in text  # the progress line was cleared before the log line
    assert text.endswith("\n") and "40/40 files (100%)" in text.splitlines()[-1]
    assert not handler.filters
