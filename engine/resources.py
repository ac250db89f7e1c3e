"""Where the bundled schemas/, flows/ and tools/ directories are."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The bundled directory `name` ("schemas", "flows" or "tools").

    A wheel carries them under engine/_data/; a source checkout (editable install) has them at its top level.
    """
    packaged = _PACKAGE / "_data" / name
    return packaged if packaged.is_dir() else _PACKAGE.parent / name
