"""The data: ids (:mod:`~recjobs.data.ids`), the lake (:mod:`~recjobs.data.lake`, its one
writer), interaction matrices, side features, the split, and generated sample data."""

from recjobs.data.features import SideFeatures, align_features, load_side_features
from recjobs.data.feedback import apply_feedback
from recjobs.data.ids import Vocabulary, id_text, positions, same_ids
from recjobs.data.interactions import Events, Holdout, Interactions, ordered_by_user_time_item
from recjobs.data.lake import RATINGS_SCHEMA, SIDE_KINDS, Lake, LakeWriter, MergeResult
from recjobs.data.split import SplitPlan, plan_split, split_events, temporal_split
from recjobs.data.synthetic import (
    LargeSpec,
    SyntheticSpec,
    events_of,
    generate,
    write_inbox,
    write_large_csv,
)

__all__ = [
    "RATINGS_SCHEMA", "SIDE_KINDS", "Events", "Holdout", "Interactions", "Lake", "LakeWriter", "LargeSpec",
    "MergeResult", "SideFeatures", "SplitPlan", "SyntheticSpec", "Vocabulary", "align_features", "apply_feedback", "events_of", "generate",
    "id_text", "load_side_features", "ordered_by_user_time_item", "plan_split", "positions", "same_ids",
    "split_events", "temporal_split", "write_inbox", "write_large_csv",
]
