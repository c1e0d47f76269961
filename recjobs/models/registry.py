"""The one list of model families: name -> the class that implements it.

Depends on nothing else in ``recjobs.models`` (nor in recjobs), so the settings can
validate family names at DAG parse time without importing numpy, implicit or
TensorFlow. Families are imported by name only when one is asked for, so a family's
libraries load only in the process that trains or scores it. Adding a family means one
module under ``recjobs/models/``, one line here and its parameters in
``recjobs/settings/_params.py``.
"""

from __future__ import annotations

import importlib

# Registry order is the order runs list, train and break ties in.
_REGISTRY: dict[str, str] = {
    "popularity": "recjobs.models.popularity:PopularityModel",
    "als": "recjobs.models.als:ALSModel",
    "lightfm": "recjobs.models.lightfm:LightFMModel",
    "tfrs": "recjobs.models.tfrs:TwoTowerModel",
    "ease": "recjobs.models.ease:EASEModel",
    "itemknn": "recjobs.models.itemknn:ItemKNNModel",
    "userknn": "recjobs.models.userknn:UserKNNModel",
    "sequence": "recjobs.models.sequence:SequenceModel",
    "ranker": "recjobs.models.ranker:RankerModel",
}

FAMILIES: tuple[str, ...] = tuple(_REGISTRY)
# What a night trains unless `families` says otherwise. userknn and the ranker are opt-in:
# at ML-20M size the ranker trains in 107 s, but as champion it ranks 593 users/s, and that
# night took 774 s on 2 cores, over the 10 minutes a default night must fit (README).
DEFAULT_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in ("userknn", "ranker"))
# Families whose fit reuses the night's models of other families (Recommender.peer_params):
# a night trains them after the others. Known here so a DAG can order its tasks at parse time.
BUILT_ON_PEERS: tuple[str, ...] = ("ranker",)


def families() -> list[str]:
    """Every registered family, in registry order."""
    return list(FAMILIES)


def get_family(name: str) -> type:
    """The :class:`~recjobs.models.base.Recommender` subclass registered as ``name``.

    (Typed ``type``: naming the base class here would make the registry import the models,
    which import the settings, which import the registry.)

    Raises :class:`~recjobs.errors.ModelError` naming the known families for any other name.
    """
    from recjobs.errors import ModelError

    try:
        target = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
