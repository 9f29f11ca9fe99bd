"""What runs: ``open_state`` (the one way to open a state folder), the daemon, its supervisor,
the review server, doctor, and the one-shot commands. The command line calls into it."""

__all__ = ["commands", "daemon", "doctor", "progress", "review", "sdnotify", "state", "supervisor"]
