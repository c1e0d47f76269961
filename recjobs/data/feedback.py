"""Typed feedback: event types (view, purchase, dislike, ...) as training weights, truth and exclusions.

The one module that reads ``settings.feedback``'s mapping onto events. The lake keeps each
row's type as delivered; the mapping is applied when a date's window is read, so changing
a weight changes the next split, not the lake. Rows without a type (rating files) pass
through untouched, so rating data gives exactly what it gave before types existed.
"""

from __future__ import annotations

import numpy as np

from recjobs.arrays import distinct
from recjobs.data.interactions import Events
from recjobs.errors import SettingsError
from recjobs.settings import FeedbackSettings

Pairs = tuple[np.ndarray, np.ndarray]


def apply_feedback(events: Events, feedback: FeedbackSettings) -> tuple[Events, Pairs | None]:
    """``events`` weighted by ``feedback``, and the (user codes, item codes) of negative pairs.

    * A typed row's rating becomes its type's weight (``feedback.weights``); rows under
      ``feedback.min_weight`` are dropped (not a positive).
    * A pair with any event of a negative type (``feedback.exclude``) loses all its rows (it is
      neither trained on nor relevant) and is returned among the negative pairs, which ranking
      excludes as it excludes seen items.
    * ``relevant`` marks the rows that count as truth when held out: typed rows of a type in
      ``feedback.relevant``, and every untyped row.

    Untyped events (no ``types``) are returned as they are, with no negative pairs.
    Raises :class:`SettingsError` when the lake holds a type the settings no longer know.
    """
    if events.types is None or events.type_names is None:
        return events, None
    names = [str(n) for n in events.type_names]
    typed = events.types >= 0
    present = sorted({names[c] for c in np.unique(events.types[typed])})
    unknown = [n for n in present if n not in feedback.known_types]
    if unknown:
        raise SettingsError(f"the lake holds event types {unknown} that feedback.weights / feedback.exclude do not "
                            f"name (known: {sorted(feedback.known_types)}); give each a weight or list it in "
                            "feedback.exclude")
    code = np.maximum(events.types, 0)
    weight_of = np.array([feedback.weights.get(n, 0.0) for n in names], np.float32)
    negative_of = np.array([n in feedback.exclude for n in names], bool)
    relevant_of = np.array([n in feedback.relevant for n in names], bool)
    negative = typed & negative_of[code]
    width = max(len(events.item_ids), 1)
    pair = events.users.astype(np.int64) * width + events.items
    negative_pairs = distinct(pair[negative])
    in_negative = np.zeros(len(pair), bool)
    if len(negative_pairs):
        at = np.minimum(np.searchsorted(negative_pairs, pair), len(negative_pairs) - 1)
        in_negative = negative_pairs[at] == pair
    weights = np.where(typed, weight_of[code], events.ratings).astype(np.float32)
    keep = ~in_negative & (~typed | (weights >= feedback.min_weight))
    relevant = ~typed | relevant_of[code]
    out = Events(events.user_ids, events.item_ids, events.users[keep], events.items[keep], weights[keep],
                 events.millis[keep], events.types[keep], events.type_names, relevant[keep])
    excluded = ((negative_pairs // width).astype(np.int32), (negative_pairs % width).astype(np.int32))
    return out, excluded


__all__ = ["Pairs", "apply_feedback"]
