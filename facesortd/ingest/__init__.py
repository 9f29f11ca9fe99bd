"""Jobs to stored faces: decode (threads or processes), detect or align, embed in micro-batches,
record. Imported by each decoding process too, so this front door stays light."""

from facesortd.ingest.pipeline import Pipeline, decode_processes_for

__all__ = ["Pipeline", "decode_processes_for"]
