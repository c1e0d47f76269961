"""Ingest: read delivered files, validate every row, and merge the valid ones into the lake.

Accepted inputs (see :func:`ingest_file`):

* MovieLens ``u.data`` (tab-separated ``user item rating timestamp``, no header) and
  ML-1M ``ratings.dat`` (``::``-separated, no header);
* CSV (or tab-separated text) with a header naming ``user_id,item_id,rating,timestamp``,
  or MovieLens 20M/25M's ``userId,movieId,rating,timestamp``, or any names mapped with
  ``ingest.columns``; other columns are ignored (a file with the rating columns is a
  ratings file, whatever else it has). UTF-8, with or without a byte-order mark, LF or
  CRLF line endings, fields optionally quoted by Python's ``csv`` rule (see
  :mod:`recjobs.ingest._text`: only a quote that opens a field quotes it);
* Parquet with those columns.

Each row is checked; bad rows (malformed lines included) go to a quarantine Parquet
file with their line number and reason, good rows are merged into ``dt=YYYY-MM-DD``
partitions, de-duplicated on (user, item, timestamp). A file whose invalid share
passes the configured limit is rejected whole (quarantine still written, so the bad
rows can be inspected) and recorded as rejected, with the ingest settings it was
judged under, so later inbox runs skip it until it is delivered corrected or those
settings change (``force`` validates it again at once). Files are remembered by
content hash, so ingesting one again changes nothing.

Values, exactly:

* ids are text of any length, kept as given: an unquoted CSV field loses surrounding
  spaces and tabs, a quoted one is kept byte for byte; ``NA``, ``null`` and the like are ids like
  any other; only an empty (or, in Parquet, null/NaN) id is invalid. Parquet integer
  ids become their decimal text, integral floats are written as integers (``7.0`` ->
  ``7``) and other floats as the shortest text that reads back the same (``7.5``);
* timestamps are Unix seconds (fractions allowed), ISO 8601 (no offset means UTC) or a
  Parquet timestamp/date column (no time zone means UTC); anything finer than a
  millisecond, the lake's unit, is truncated to the millisecond.

Memory does not grow with the file: batches are validated one at a time (plain text
blocks with Arrow compute on the raw bytes, anything unusual with the exact per-value
rules of :func:`validate`), valid rows are spilled to Arrow files in a private folder
under ``<lake>/.spill`` and bad rows streamed to the quarantine file; then, under the
lake's lock, consecutive days are merged a group at a time (``ingest.merge_rows``),
each partition replaced atomically. Long steps log progress every
``ingest.progress_seconds``.

Modules: ``_text`` (delimited text), ``_parquet``, ``_layout`` (which kind of file,
which columns), ``_validate``, ``_spill`` (spill and quarantine), ``_ratings`` (one
rating file), ``_side`` (feature and title files), ``_movielens``, ``_inbox``, and
:mod:`~recjobs.ingest.ledger` (the ``ingest_log`` rows).
"""


from recjobs.errors import IngestError
from recjobs.ingest._inbox import (
    INBOX_PATTERNS,
    inbox_files,
    ingest_inbox,
    ingest_path,
    pending_inbox_files,
)
from recjobs.ingest._layout import REQUIRED, parse_columns_option, sniff_kind
from recjobs.ingest._movielens import import_movielens, movielens_side_frames
from recjobs.ingest._parquet import read_parquet_frame
from recjobs.ingest._ratings import ingest_file
from recjobs.ingest._report import STATUS_INGESTED, STATUS_REJECTED, IngestReport, file_sha256
from recjobs.ingest._side import ingest_side_file, ingest_side_frame, sync_titles
from recjobs.ingest._text import read_delimited, read_header, split_record
from recjobs.ingest._validate import parse_timestamps, validate
from recjobs.ingest.ledger import (
    known_hash,
    record_ingest,
    record_rejection,
    rejection_reason,
    seen_before,
)

__all__ = [
    "INBOX_PATTERNS", "REQUIRED", "STATUS_INGESTED", "STATUS_REJECTED", "IngestError", "IngestReport",
    "file_sha256", "import_movielens", "inbox_files", "ingest_file", "ingest_inbox", "ingest_side_file",
    "ingest_path", "ingest_side_frame", "known_hash", "movielens_side_frames", "parse_columns_option", "parse_timestamps",
    "pending_inbox_files", "read_delimited", "read_parquet_frame", "read_header", "record_ingest", "record_rejection", "rejection_reason", "seen_before",
    "sniff_kind", "split_record", "sync_titles", "validate",
]
