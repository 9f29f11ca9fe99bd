"""Inbox folders to jobs: watchdog observers, the catch-up scan and rescans, settling."""

from facesortd.inbox.jobs import Job
from facesortd.inbox.watcher import Watcher

__all__ = ["Job", "Watcher"]
