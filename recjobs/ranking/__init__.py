"""Everything between a fitted model and a published list.

* :mod:`~recjobs.ranking.lists`: top-N over every user (and neighbours over every item)
  as long frames, a chunk at a time;
* :mod:`~recjobs.ranking.ann`: faster exact or approximate top-N for vector families;
* :mod:`~recjobs.ranking.rules`: business rules (exclusions, allow-lists, per-user);
* :mod:`~recjobs.ranking.rerank`: rules, then MMR / category caps / freshness;
* :mod:`~recjobs.ranking.coldstart`: new items, users with few interactions, segments.
"""

from recjobs.ranking.ann import (
    AnnRanker,
    ClusteredIndex,
    NormPrunedIndex,
    build_index,
    for_publish,
    with_ann,
)
from recjobs.ranking.coldstart import (
    ColdItemProjection,
    ThinUserNeighbourhood,
    add_cold_items,
    align_seen,
    for_ranking,
    segment_popular_rows,
    thin_users,
    user_segment_frame,
)
from recjobs.ranking.lists import item_frames, ranked_frames, user_frames
from recjobs.ranking.rerank import ItemSignals, PostProcess, build_postprocess, greedy_rerank
from recjobs.ranking.rules import Rules, blocked_items, load_rules, read_source, rules_active

__all__ = [
    "AnnRanker", "ClusteredIndex", "ColdItemProjection", "ItemSignals", "NormPrunedIndex", "PostProcess", "Rules",
    "ThinUserNeighbourhood", "add_cold_items", "align_seen", "blocked_items", "build_index", "build_postprocess",
    "for_publish", "for_ranking", "greedy_rerank", "item_frames", "load_rules", "ranked_frames", "read_source",
    "rules_active", "segment_popular_rows", "thin_users", "user_frames", "user_segment_frame", "with_ann",
]
