"""Output folders and files: checked before any work, verified after every write."""

from __future__ import annotations

import tempfile
from pathlib import Path


def prepare_out_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and prove it writable, so no work is done only to be lost at the end.

    Raises ValueError (a usage error) naming the folder and the reason.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output folder {path} is an existing file; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # permission bits say little when running as root
            pass
    except OSError as error:
        raise ValueError(f"output folder {path} is not writable ({error.strerror or error})") from None
    return path


def prepare_out_file(path: str | Path) -> Path:
    """Check that ``path`` can be written (its folder created if needed) before the work that fills it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the file to write, e.g. {path / 'result.json'}")
    prepare_out_dir(path.parent)
    return path
