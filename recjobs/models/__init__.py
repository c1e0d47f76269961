"""Model families behind one contract (:mod:`recjobs.models.base`).

The registry (:mod:`recjobs.models.registry`) is the one list of families; each family
is one module here, imported by name only when it is asked for, so TensorFlow or
implicit load only in the process that trains or scores that family (never when a DAG
is parsed). The contract's classes are imported on first use too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recjobs.models.registry import FAMILIES, families, get_family

if TYPE_CHECKING:
    from recjobs.models.base import Recommender
    from recjobs.models.neighbourhood import Neighbourhood, NeighbourhoodRecommender
    from recjobs.models.vectors import VectorRecommender, Vectors



def __getattr__(name: str) -> Any:  # noqa: ANN401 - PEP 562: the contract's classes on first use
    if name == "Recommender":
        from recjobs.models.base import Recommender

        return Recommender
    if name in ("VectorRecommender", "Vectors"):
        from recjobs.models import vectors

        return getattr(vectors, name)
    if name in ("NeighbourhoodRecommender", "Neighbourhood"):
        from recjobs.models import neighbourhood

        return getattr(neighbourhood, name)
    raise AttributeError(f"module 'recjobs.models' has no attribute {name!r}")


__all__ = ["FAMILIES", "Neighbourhood", "NeighbourhoodRecommender", "Recommender", "VectorRecommender",
           "Vectors", "families", "get_family"]
