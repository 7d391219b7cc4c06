"""Where secrets come from: a configured file, else the systemd credential of that name (``LoadCredential=``)."""

from __future__ import annotations

import os
from pathlib import Path


def credential_file(configured: Path | None, name: str) -> Path | None:
    """``configured`` if set; else ``$CREDENTIALS_DIRECTORY/<name>`` if systemd passed it; else None."""
    if configured is not None:
        return configured
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / name).exists():
        return Path(directory) / name
    return None
