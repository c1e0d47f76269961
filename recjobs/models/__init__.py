"""Model family registry.

Families are imported lazily by name so that TensorFlow or implicit load only in
the process that trains or scores that family (never at DAG parse time). Adding a
family means one module and one line here.
"""

from __future__ import annotations

import importlib

from recjobs.models.base import Recommender

_REGISTRY: dict[str, str] = {
    "popularity": "recjobs.models.popularity:PopularityModel",
    "als": "recjobs.models.als:ALSModel",
    "lightfm": "recjobs.models.lightfm:LightFMModel",
    "tfrs": "recjobs.models.tfrs:TwoTowerModel",
    "ease": "recjobs.models.ease:EASEModel",
    "itemknn": "recjobs.models.itemknn:ItemKNNModel",
    "sequence": "recjobs.models.sequence:SequenceModel",
}


def families() -> list[str]:
    return list(_REGISTRY)


def get_family(name: str) -> type[Recommender]:
    """The :class:`Recommender` subclass registered as ``name``."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {families()}") from None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["Recommender", "families", "get_family"]
