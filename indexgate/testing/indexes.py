"""Small valid index directories (``records.jsonl`` and the ``manifest.json`` that
``INTEGRITY_CHECK`` reads, ``indexgate.locations``) for tests, benchmarks and the demo."""

from __future__ import annotations

import json
from pathlib import Path

from indexgate.locations import MANIFEST, file_sha256


def write_index(path: Path, records: int) -> str:
    """Create ``path`` holding ``records`` records and their manifest; returns the location."""
    path.mkdir(parents=True, exist_ok=True)
    data = path / "records.jsonl"
    data.write_text("".join(json.dumps({"id": n}) + "\n" for n in range(records)))
    (path / MANIFEST).write_text(json.dumps({"record_count": records, "files": {data.name: file_sha256(data)}}))
    return str(path)
