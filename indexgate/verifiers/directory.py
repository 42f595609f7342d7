"""Post-switch verification of a local directory (kind ``file``): it exists.

Only that: whether its files match a manifest is ``INTEGRITY_CHECK``'s question, asked
before the switch (``indexgate.locations.inspect``), and only when the request asks it.
"""

from __future__ import annotations

from indexgate import locations


def verify_directory(location: str) -> tuple[bool, str]:
    path = locations.as_path(location)
    if path is None:  # the registry sends only file locations here
        return False, f"{location!r} is not a local directory"
    if path.is_dir():
        return True, f"{path} is a directory"
    return False, f"{path} does not exist or is not a directory"
