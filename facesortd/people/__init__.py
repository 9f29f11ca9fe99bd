"""Faces to people: the clustering, incremental assignment and recluster, the identity service
that runs them in the daemon, and the corrections a person makes."""

from facesortd.people.clustering import ClusterParams, Constraints
from facesortd.people.service import IdentityService, service_for

__all__ = ["ClusterParams", "Constraints", "IdentityService", "service_for"]
