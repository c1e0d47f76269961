"""Canonical column names, used by every module instead of string literals."""

from typing import Final

USER: Final = "user_id"
ITEM: Final = "item_id"
RATING: Final = "rating"
TIMESTAMP: Final = "timestamp"
DATE: Final = "dt"  # Hive partition key of the ratings lake
SCORE: Final = "score"
RANK: Final = "rank"
MODEL_VERSION: Final = "model_version"
GENERATED_AT: Final = "generated_at"
RUN_DATE: Final = "run_date"
REASON: Final = "reason"
SOURCE_ROW: Final = "source_row"
SOURCE_FILE: Final = "source_file"
FEATURE: Final = "feature"
WEIGHT: Final = "weight"
TITLE: Final = "title"
SIMILAR_ITEM: Final = "similar_item_id"
# A published recommendation's predicted rating, where the champion predicts explicit ratings.
PREDICTED_RATING: Final = "predicted_rating"
SEGMENT: Final = "segment"  # a user feature, e.g. occupation=writer (cold start)
EVENT_TYPE: Final = "event_type"  # optional: a typed event (view, purchase, ...), weighted by settings.feedback

INTERACTION_COLUMNS: Final = (USER, ITEM, RATING, TIMESTAMP)
