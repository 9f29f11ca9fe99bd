"""The run --once progress bar: only on a terminal, log lines never garble it, final figures kept."""

from __future__ import annotations

import io
import logging
import re
import sys
import time

from facesortd.app.progress import Progress, format_line


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_format_line_has_done_total_rate_and_eta():
    assert format_line(0, 0, 0.0).startswith("0 files")
    line = format_line(250, 1000, 10.0)
    assert " 25%" in line and "250/1000" in line and "25.00 files/s" in line
    assert "<00:30" in line   # ETA
    assert "<01:40" in format_line(100, 10100, 1.0)
    assert "5/5" in format_line(5, 3, 1.0) and "100%" in format_line(5, 3, 1.0)


def test_silent_when_not_a_terminal():
    out = io.StringIO()
    root = logging.getLogger()
    handlers = list(root.handlers)
    with Progress(lambda: (1, 2), stream=out, interval=0.01, delay=0):
        assert root.handlers == handlers   # logging untouched
        time.sleep(0.05)
    assert out.getvalue() == ""


def test_draws_on_a_terminal_and_log_lines_clear_it(monkeypatch):
    out = Tty()
    monkeypatch.setattr(sys, "stderr", out)   # what the CLI's log handler writes to
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    handlers = list(root.handlers)
    counts = [0]
    try:
        with Progress(lambda: (counts[0], 40), stream=out, interval=0.01, delay=0):
            time.sleep(0.05)
            assert handler not in root.handlers   # logging goes through tqdm.write meanwhile
            logging.getLogger("facesortd.test").warning("a log line")
            counts[0] = 40
            time.sleep(0.05)
        assert root.handlers == handlers   # and is given back
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert "0/40" in text
    # The bar was blanked (carriage return, spaces over it, carriage return) before the log
    # line, which has a line of its own; then the bar came back.
    before, line, after = re.split(r"(\r +\ra log line\n)", text)
    assert "0/40" in before.rsplit("\r", 1)[-1] and "/40" in after
    assert text.endswith("\n")
    last = text.rstrip("\n").rsplit("\r", 1)[-1]
    assert "40/40" in last and "100%" in last


def test_small_runs_draw_nothing():
    out = Tty()
    with Progress(lambda: (3, 3), stream=out, interval=0.01, delay=5):
        time.sleep(0.02)
    assert out.getvalue() == ""
