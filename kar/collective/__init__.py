"""Collective knowledge, REKI-style: one LLM question per cluster of users or items.

Users and items are clustered on collaborative signal (truncated SVD of the interaction
matrix, then k-means; :func:`cluster_entities`); one factorised question is asked per
cluster (``kar.prompts.collective``); members get their cluster's knowledge alone or
beside their own (:func:`member_answers`), per feature (``generation.collective`` in
kar.yaml). Encoding and the adaptor consume the member-level rows unchanged.
"""

from kar.collective.clusters import Clusters, cluster_entities
from kar.collective.members import MODES, member_answers, source_counts, split_cluster_answers

__all__ = [
    "MODES",
    "Clusters",
    "cluster_entities",
    "member_answers",
    "source_counts",
    "split_cluster_answers",
]
