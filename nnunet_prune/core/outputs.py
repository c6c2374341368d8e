"""Folders and files the package's tools write: ordinary permissions, and deletion only of what is provably ours.

This is the package's one answer to "is this file ours?". Every tool that may later replace or delete an output
(``export --overwrite``, ``sweep --restart``, the demo's working folder, ``report``'s files, ``plans-from-model
--overwrite``) records what it wrote in a manifest, ``.nnunet_prune_manifest.json``, next to the files: the tool's
name and every file it wrote, by path relative to the folder, with its size in bytes (and, for a small file a user
may edit in place without changing its size, e.g. a plans file, its SHA-256 under ``sha256``). A file counts as the
tool's own only if it is listed there with the size (and digest) it has now; anything else (a file the user put
there, a file the user changed, a folder without a manifest) makes the folder *foreign*, and a foreign folder is
never deleted or replaced: the tool stops with an :class:`~nnunet_prune.NnUNetPruneError` naming the entries before
doing any work.

Temporary folders are created with :func:`tempfile.mkdtemp` (mode 0700) and then given the mode any ``mkdir``
would have (``0777 & ~umask``), so a renamed-into-place export is readable by colleagues and services.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from nnunet_prune import NnUNetPruneError, __version__

MANIFEST = ".nnunet_prune_manifest.json"


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(directory: bool = True) -> int:
    """Mode a new folder (0777) or file (0666) gets from ``mkdir``/``open`` under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder in ``parent`` (created if missing) with ordinary permissions (not mkdtemp's 0700).

    Raises:
        NnUNetPruneError: ``parent`` cannot be created or written to.
    """
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as e:
        raise NnUNetPruneError(f"Cannot write to {parent} ({e.strerror or e}). Choose a writable location.") \
            from None
    tmp.chmod(ordinary_mode())
    return tmp


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of ``folder`` ({"tool", "version", "files": {relative path: size}}), or None."""
    file = Path(folder) / MANIFEST
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    return data


def made_by(folder: str | os.PathLike, tool: str) -> bool:
    """Whether ``folder``'s manifest says ``tool`` made it (the one way a tool recognises its own output or working
    folder; which of its files are its own the manifest's file list says)."""
    manifest = read_manifest(folder)
    return manifest is not None and manifest.get("tool") == tool


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _matches(manifest: dict, rel: str, path: Path) -> bool:
    """Whether the file ``path`` is as ``manifest`` lists ``rel``: a regular file of the recorded size (and SHA-256,
    where one is recorded)."""
    if path.is_symlink() or not path.is_file() or manifest["files"].get(rel) != path.stat().st_size:
        return False
    digest = (manifest.get("sha256") or {}).get(rel)
    return digest is None or digest == _sha256(path)


def record_files(folder: str | os.PathLike, tool: str, files: Iterable[str | os.PathLike] | None = None,
                 digest: bool = False) -> None:
    """Add ``files`` (paths inside ``folder``; None: every file now under ``folder``) to the folder's manifest as
    written by ``tool``, with their current sizes (bytes) and, with ``digest``, their SHA-256 (for small files a user
    may edit in place without changing the size). Files that do not exist are dropped from the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder) or {"tool": tool, "version": __version__, "files": {}}
    listed: dict = manifest["files"]
    digests: dict = manifest.get("sha256") or {}
    paths = _files_under(folder) if files is None else [folder / f for f in files]
    for path in paths:
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST, MANIFEST + ".tmp"):
            continue
        digests.pop(rel, None)
        if path.is_file():
            listed[rel] = path.stat().st_size
            if digest:
                digests[rel] = _sha256(path)
        else:
            listed.pop(rel, None)
    if digests:
        manifest["sha256"] = digests
    else:
        manifest.pop("sha256", None)
    manifest["tool"], manifest["version"] = tool, __version__
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(folder / MANIFEST)


def foreign_entries(folder: str | os.PathLike, tool: str | None = None) -> list[str]:
    """Entries of ``folder`` that ``tool`` (any tool of this package if None) cannot prove it wrote: everything
    if there is no manifest (or one of another tool), else files not listed or listed with another size."""
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [folder.name]
    manifest = read_manifest(folder)
    if manifest is None or (tool is not None and manifest.get("tool") != tool):
        return sorted(p.name for p in folder.iterdir())
    out = []
    for p in _files_under(folder):
        rel = p.relative_to(folder).as_posix()
        if rel in (MANIFEST, MANIFEST + ".tmp"):
            continue
        if not _matches(manifest, rel, p):
            out.append(rel)
    return out


def is_own_file(folder: str | os.PathLike, name: str, tool: str) -> bool:
    """Whether the file ``folder/name`` exists and ``tool`` provably wrote it: listed in the folder's manifest of
    ``tool`` with the size (and SHA-256, where recorded) it has now. A folder's other files do not matter."""
    manifest = read_manifest(folder)
    return manifest is not None and manifest.get("tool") == tool and _matches(manifest, name, Path(folder) / name)


def _describe(entries: list[str], limit: int = 5) -> str:
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def check_replaceable(folder: str | os.PathLike, tool: str, what: str) -> None:
    """Raise unless ``folder`` is absent, empty, or holds only files ``tool`` wrote (see the module docstring).

    ``what`` names the action for the message, e.g. ``"--overwrite"``.

    Raises:
        NnUNetPruneError: the folder holds anything else (the message lists it); nothing was changed.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise NnUNetPruneError(f"{folder} exists and is not a folder; {what} never replaces it. Choose another "
                               f"output.")
    if not any(folder.iterdir()):
        return
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("tool") != tool:
        made_by = f"by `nnunet-prune {manifest['tool']}`" if manifest else "by something else"
        raise NnUNetPruneError(
            f"{folder} was not written by `nnunet-prune {tool}` (it was written {made_by}, or by a version without "
            f"a record of its files); {what} only replaces this command's own output and never deletes anything "
            f"else. Nothing was changed: choose another output folder, or move the folder away yourself.")
    foreign = foreign_entries(folder, tool)
    if foreign:
        raise NnUNetPruneError(
            f"{folder} holds files `nnunet-prune {tool}` did not write (or that were changed since): "
            f"{_describe(foreign)}. {what} never deletes them. Nothing was changed: move them away, or choose "
            f"another output folder.")


def remove_owned(folder: str | os.PathLike, tool: str) -> None:
    """Delete ``folder`` after :func:`check_replaceable` proved every file in it is ``tool``'s own.

    Files are deleted one by one from the manifest's list, then the folders they leave empty; if anything else
    appears meanwhile it stays and an error is raised.

    Raises:
        NnUNetPruneError: the folder holds anything not written by ``tool``.
    """
    folder = Path(folder)
    check_replaceable(folder, tool, "replacing it")
    if not folder.exists():
        return
    manifest = read_manifest(folder) or {"files": {}}
    for rel in manifest["files"]:
        (folder / rel).unlink(missing_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    if any(folder.iterdir()):
        left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
        raise NnUNetPruneError(f"{folder}: files appeared while it was being replaced and were kept: "
                               f"{_describe(left)}.")
    folder.rmdir()


def check_writable_files(folder: str | os.PathLike, names: Iterable[str], tool: str, option: str = "-o") -> None:
    """Before any work: every file ``tool`` will (over)write in ``folder`` is absent or its own earlier output.

    Raises:
        NnUNetPruneError: ``folder`` is a file, or one of the files exists and was not written by ``tool``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NnUNetPruneError(f"{option} {folder} exists and is not a folder: choose another output folder.")
    manifest = (read_manifest(folder) if folder.is_dir() else None) or {"files": {}}
    clash = [n for n in names if (folder / n).exists() and not _matches(manifest, n, folder / n)]
    if clash:
        raise NnUNetPruneError(f"{option} {folder} already holds {_describe(clash)}, not written by `nnunet-prune "
                               f"{tool}` (or changed since); it would be overwritten. Nothing was written: choose "
                               f"another output folder or move the file(s) away.")
