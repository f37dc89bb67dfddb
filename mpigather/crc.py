"""crc32c, the checksum of results, table rows and task lines.

The ``crc32c`` package's ``__init__`` reads its own version through ``importlib.metadata``
(which imports ``email``, ``argparse``, ``csv``...): about 20 ms of every process's start, the
master's and each worker's, for nothing. Its C extension is loaded here on its own; if that
fails (another layout of the package), the package is imported as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _extension() -> Any:
    """The module ``crc32c._crc32c``, loaded without running ``crc32c/__init__.py``; None if not found."""
    import importlib.machinery
    import importlib.util
    import os
    import sys

    name = "crc32c._crc32c"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("crc32c")  # finds the package without running it
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_crc32c" + suffix)
            if os.path.exists(path):
                loader = importlib.machinery.ExtensionFileLoader(name, path)
                ext = importlib.util.spec_from_file_location(name, path, loader=loader)
                if ext is not None:
                    module = importlib.util.module_from_spec(ext)
                    loader.exec_module(module)
                    return module
    return None


def _load() -> Callable[..., int]:
    try:
        ext = _extension()
    except Exception:  # noqa: BLE001 - the package's own import, below
        ext = None
    if ext is not None and callable(getattr(ext, "crc32c", None)):
        fn: Callable[..., int] = ext.crc32c
        return fn
    from crc32c import crc32c as packaged

    return packaged


crc32c: Callable[..., int] = _load()
