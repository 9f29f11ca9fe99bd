"""The SQLite store (images, faces and their vectors, identities, corrections, the journal's
rows), its schema and migrations, the identities' invariants, and the state folder's lock.
Nothing in it imports another stage."""

from facesortd.store.database import DB_NAME, ImageRow, Store, decode_path, encode_path
from facesortd.store.lock import StateBusy, StateLock

__all__ = ["DB_NAME", "ImageRow", "Store", "decode_path", "encode_path", "StateBusy", "StateLock"]
