"""``facesortd bench ...`` and ``facesortd eval``: speed and quality figures, never on the runtime
path (torch and the model are imported lazily, where a benchmark needs them)."""

__all__ = ["ceiling", "cluster", "common", "detect", "evaluate", "ingest", "metrics", "model", "web"]
