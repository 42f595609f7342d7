"""Index locations: their kind, manifest facts for validation, symlink swaps on disk.

A location's **kind** (``kind_of``) chooses how it is verified after a switch
(``indexgate.verifiers``): ``file`` for a local directory (an absolute or relative path
with a ``/``, or a ``file://`` URL), its URL scheme otherwise (``http``, ``https``, ``es``,
``s3``...), ``index-name`` for a bare name such as an Elasticsearch index or alias
(``products-v2``: no scheme, no ``/``), ``none`` when the build gave no location.

A local directory may hold a ``manifest.json`` of ``{"record_count": N, "files":
{"name": "sha256hex"}}``; only ``INTEGRITY_CHECK`` reads it (``inspect``). This module does
the I/O; the decisions are made in ``indexgate.shadows`` from the facts it returns.

The **filesystem** switch strategy keeps ``<links_dir>/<branch>/<index_type>/current`` as a
symlink to the active index and swaps it with ``os.replace`` of a freshly made link: a
reader resolving ``current`` sees the old index or the new one, never no index. The link
of the previous index is kept as ``previous`` (the backup).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from indexgate.shadows import LocationFacts

MANIFEST = "manifest.json"
FILE, INDEX_NAME, NO_LOCATION = "file", "index-name", "none"


def kind_of(location: str | None) -> str:
    """``file``, a URL scheme (lower case), ``index-name`` or ``none``: see the module docstring."""
    if not location:
        return NO_LOCATION
    scheme = urlparse(location).scheme.lower()
    if scheme and len(scheme) > 1:  # one letter: a Windows drive, i.e. a path
        return scheme
    return FILE if "/" in location or "\\" in location else INDEX_NAME


def as_path(location: str | None) -> Path | None:
    """The local directory a ``file`` location names, or None for every other kind."""
    if kind_of(location) != FILE:
        return None
    assert location is not None
    parsed = urlparse(location)
    return Path(unquote(parsed.path)) if parsed.scheme.lower() == FILE else Path(location)


def inspect(location: str | None) -> LocationFacts:
    """Does the location exist, and do its files match its manifest? (``INTEGRITY_CHECK``)"""
    path = as_path(location)
    if path is None:
        return LocationFacts(False, False, f"INTEGRITY_CHECK reads {MANIFEST} in a local directory; {location!r} "
                                           f"is a {kind_of(location)} location, which has none")
    if not path.is_dir():
        return LocationFacts(False, False, f"{path} does not exist")
    if not (path / MANIFEST).is_file():
        return LocationFacts(True, False, f"{path} has no {MANIFEST}: INTEGRITY_CHECK has nothing to check "
                                          "(leave it out for directories written without one)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return LocationFacts(True, False, f"{path / MANIFEST} unreadable: {exc}")
    for name, digest in files.items():
        target = path / name
        if not target.is_file() or file_sha256(target) != digest:
            return LocationFacts(True, False, f"{target} is missing or does not match its checksum")
    return LocationFacts(True, True, f"{len(files)} file(s) match {MANIFEST}")


def link_dir(links_dir: Path, branch: str, index_type: str) -> Path:
    return links_dir / quote(branch, safe="") / quote(index_type, safe="")


def swap_link(links_dir: Path, branch: str, index_type: str, location: str | None) -> Path:
    """Atomically point ``current`` at ``location``; the old target becomes ``previous``."""
    folder = link_dir(links_dir, branch, index_type)
    folder.mkdir(parents=True, exist_ok=True)
    current = folder / "current"
    target = as_path(location)
    if target is None:
        raise ValueError(f"the filesystem strategy needs a local directory, got {location!r}")
    if current.is_symlink():
        _replace_link(folder / "previous", Path(os.readlink(current)))
    _replace_link(current, target)
    return current


def remove_link(links_dir: Path, branch: str, index_type: str) -> None:
    """No active index any more (a first switch rolled back): drop ``current``."""
    (link_dir(links_dir, branch, index_type) / "current").unlink(missing_ok=True)


def _replace_link(link: Path, target: Path) -> None:
    temporary = link.with_name(f".{link.name}.{uuid.uuid4().hex}")
    temporary.symlink_to(target, target_is_directory=True)
    os.replace(temporary, link)  # atomic: the link always exists, old or new


def file_sha256(path: Path) -> str:
    """The hex digest a manifest records for a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
