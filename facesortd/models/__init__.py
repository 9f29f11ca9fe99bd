"""The models: embedders behind one small interface (facenet, dlib; weights load lazily), the
MTCNN detector and its stages. Importing this package loads no model and no torch."""

from facesortd.models.base import TUNED_EPS, Embedder
from facesortd.models.embedders import create_embedder, resolve_device, tuned_eps

__all__ = ["TUNED_EPS", "Embedder", "create_embedder", "resolve_device", "tuned_eps"]
