"""Where the benchmark data lives: an explicit directory, else `$GPO_DATA_DIR`, else a default.

The defaults are tried in order: `../shared/data` relative to the current directory (the layout of
a checkout next to the shared reference data), then `~/.cache/gpo-engine/data` (where `download`
writes). The last default is returned even when it does not exist yet, so that `download` can
fill it and loaders can say where they looked.
"""

from __future__ import annotations

import os
from pathlib import Path

from backends.errors import ConfigError

DATA_DIR_ENV = "GPO_DATA_DIR"
CACHE_DATA_DIR = Path("~/.cache/gpo-engine/data")
CHECKOUT_DATA_DIR = Path("../shared/data")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory to read; ConfigError when an explicitly named one does not exist."""
    if data_dir is not None:
        return _existing(Path(data_dir), "the given data directory")
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return _existing(Path(from_env), f"${DATA_DIR_ENV}")
    checkout = Path.cwd() / CHECKOUT_DATA_DIR
    if checkout.is_dir():
        return checkout.resolve()
    return CACHE_DATA_DIR.expanduser()


def default_download_dir() -> Path:
    """Where `download` writes when no directory is given and none is configured."""
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env).expanduser() if from_env else CACHE_DATA_DIR.expanduser()


def _existing(path: Path, source: str) -> Path:
    path = path.expanduser()
    if not path.is_dir():
        raise ConfigError(f"data directory {str(path)!r} ({source}) does not exist")
    return path.resolve()
