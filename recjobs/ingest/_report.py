"""What ingesting one file did: the report shown to people and stored in ``ingest_log``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

STATUS_INGESTED = "ingested"
STATUS_REJECTED = "rejected"
# Reserved before a merge, replaced by the outcome (see :mod:`recjobs.ingest.ledger`).
STATUS_MERGING = "merging"


@dataclass
class IngestReport:
    """What one file contributed; also the row written to ``ingest_log``."""

    source_path: str
    content_hash: str
    rows_read: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    duplicates_dropped: int = 0
    partitions: list[str] = field(default_factory=list)
    quarantine_path: str | None = None
    skipped: bool = False
    reasons: dict[str, int] = field(default_factory=dict)
    status: str = STATUS_INGESTED
    reason: str | None = None

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.skipped and self.status == STATUS_REJECTED:
            return (
                f"{self.source_path}: rejected on an earlier run (sha256 {self.content_hash[:12]}), "
                f"skipped. Earlier reason: {self.reason} -- deliver a corrected file (new content is "
                f"ingested as new), or change the ingest settings that rejected it (it is then validated "
                f"again on the next run); `recjobs ingest --force {self.source_path}` validates this "
                f"content again now, under the same settings"
            )
        if self.skipped:
            return f"{self.source_path}: already ingested (sha256 {self.content_hash[:12]}), skipped"
        return (
            f"{self.source_path}: {self.rows_read} rows read, {self.rows_valid} valid, "
            f"{self.rows_quarantined} quarantined, {self.duplicates_dropped} duplicates dropped, "
            f"{len(self.partitions)} partitions"
        )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["STATUS_INGESTED", "STATUS_MERGING", "STATUS_REJECTED", "IngestReport", "file_sha256"]
