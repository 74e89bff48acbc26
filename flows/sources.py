"""Form source files: expand sources (files, directories, globs) to files, and read their bytes.

What the bytes hold is gruviz_core.formats.reader's business (decoding, parsing, adapting, merging);
this module only finds and reads files. Files are read in a thread pool where that pays (I/O, gzip
and sha256 release the GIL): several compressed or large files. A source that does not exist, a
directory that cannot be listed, a broken symbolic link or an unreadable file is an
UnreadableFileError naming it: its rows would otherwise be left out of the ingest silently.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import glob
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from gruviz_core.errors import InputError, UnreadableFileError
from gruviz_core.formats.reader import Forms, InflateLimit, Source, build_forms, parse_file, raw_table
from storage.forms import latest_snapshot, read_manifest
from storage.store import StorePath

__all__ = ["SUFFIXES", "expand_sources", "gone_files", "read_forms", "read_source", "read_sources"]

SUFFIXES = (".csv", ".csv.gz", ".parquet")
"""Form files that a directory or a glob contributes."""

_READ_THREADS = 8
"""Threads reading files: I/O, gzip and sha256 release the GIL, decoding does not."""
_BIG_FILE = 1 << 20
"""Plain files larger than this on average are read in threads."""


def read_forms(sources: list[str] | str, *, fmt: str | None = None,
               progress: Callable[[int, int, int], None] | None = None, inflate: InflateLimit | None = None) -> Forms:
    """Read, adapt and merge every source; writes nothing. Errors name the file (UnreadableFileError, ...).
    `progress(files_read, files, rows_read)` is called as files are read."""
    return build_forms(read_sources(expand_sources(sources), progress, inflate), fmt=fmt)


def read_source(path: str | Path) -> pd.DataFrame:
    """One source file as a raw table: CSV cells as strings, Parquet as typed (gruviz_core.formats.reader.raw_table)."""
    return raw_table(_read(0, Path(path)))


def expand_sources(sources: list[str] | str) -> list[Path]:
    """Files named, found under directories (recursively) or matched by globs; sorted, each once.

    A sub-directory that cannot be listed is an UnreadableFileError naming it (its files would be lost).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: list[Path] = []
    for src in map(str, sources):
        p = Path(src).expanduser()
        if p.is_dir():
            found += _walk(p.resolve())
        elif p.is_file():
            found.append(p.resolve())
        elif glob.has_magic(src):
            matches = [Path(m) for m in glob.glob(os.path.expanduser(src), recursive=True)]
            found += [_resolved(m) for m in matches if m.is_file() and _readable_suffix(m)]
            if not matches:
                raise InputError(f"{src}: the glob matches no file; check the pattern")
        else:
            raise UnreadableFileError(f"{src}: no such file or directory")
    files = sorted(set(found))
    if not files:
        raise InputError(f"{', '.join(map(str, sources))}: no .csv, .csv.gz or .parquet files found")
    return files


def gone_files(root: str | StorePath, sources: list[str]) -> list[dict]:
    """Files of the latest snapshot that `sources` held then and hold no more (archived, rotated, deleted):
    their manifest entries (path, accepted, ...); [] before the first snapshot or when none left.

    A file counts as the sources' when it lies under one of their directories, is one of their files or
    matches one of their globs; files of a snapshot made from other sources are not counted as gone."""
    snapshot = latest_snapshot(root)
    if snapshot is None:
        return []
    try:
        recorded = read_manifest(root, snapshot).get("files", [])
    except (OSError, ValueError):
        return []  # no readable manifest: nothing to compare with (the ingest itself names a broken store)
    present = {str(p) for p in expand_sources(sources)}
    return [f for f in recorded if f["path"] not in present and _held_by(Path(f["path"]), sources)]


def _held_by(path: Path, sources: list[str]) -> bool:
    """Whether `path` (absolute, resolved as expand_sources resolves) belongs to one of `sources`."""
    for src in map(str, sources):
        if glob.has_magic(src):
            pattern = os.path.abspath(os.path.expanduser(src))
            if fnmatch.fnmatch(str(path), pattern) or fnmatch.fnmatch(str(_resolved(path)), pattern):
                return True
            continue
        p = Path(src).expanduser()
        top = Path(os.path.realpath(p))
        if path == top or top in path.parents or p.absolute() in path.parents:
            return True
    return False


def read_sources(files: list[Path], progress: Callable[[int, int, int], None] | None = None,
                 inflate: InflateLimit | None = None) -> list[Source]:
    """Every file's bytes, decoded (gruviz_core.formats.reader.parse_file), in file order; the first error in
    file order is raised. `progress(files_read, files, rows_read)` is called as files are read.

    Threads pay where a file's work is mostly I/O or gzip (both release the GIL): several compressed or
    large files. Small plain files (a season of form guides) are GIL-bound work; threads only add overhead.
    """
    jobs = list(enumerate(files))
    if len(files) < 2 or not _threads_pay(files):
        return _counted(([_read(i, p, inflate)] for i, p in jobs), len(files), progress)
    chunk = max(1, -(-len(jobs) // (4 * _READ_THREADS)))
    batches = [jobs[a:a + chunk] for a in range(0, len(jobs), chunk)]
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(batches))) as pool:
        return _counted(pool.map(lambda b: [_read(i, p, inflate) for i, p in b], batches), len(files), progress)


def _counted(batches, n_files: int, progress: Callable[[int, int, int], None] | None) -> list[Source]:
    """The sources of every batch in order; `progress(files_read, n_files, rows_read)` after each batch."""
    out: list[Source] = []
    rows = 0
    for batch in batches:
        out.extend(batch)
        rows += sum(src.rows for src in batch)
        if progress is not None:
            progress(len(out), n_files, rows)
    return out


def _threads_pay(files: list[Path]) -> bool:
    if any(p.name.lower().endswith((".gz", ".parquet")) for p in files):
        return True
    try:
        total = sum(os.stat(p).st_size for p in files)
    except OSError:
        return False  # the read will name the file
    return total / len(files) > _BIG_FILE


def _read(index: int, path: Path, inflate: InflateLimit | None = None) -> Source:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot be read ({exc.strerror or exc}); check it exists and its permissions") from exc
    return parse_file(index, str(path), data, inflate)


def _walk(top: Path) -> list[Path]:
    """Form files under `top`, recursively; symlinked directories are followed, each real directory once
    (a link back up the tree is a cycle, not more files). A link that loops on itself or a form file's link
    to nothing is an UnreadableFileError naming it: its files would be left out of the ingest."""
    out: list[Path] = []
    stack = [top]
    seen = {os.path.realpath(top)}
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            raise UnreadableFileError(
                f"{d}: cannot list this directory ({exc.strerror or exc}); its files would be left out of the "
                "ingest. Fix its permissions or leave it out of the sources."
            ) from exc
        for e in entries:
            if e.is_symlink():
                kind = _link_kind(Path(e.path))
                if kind == "dir":
                    real = os.path.realpath(e.path)
                    if real not in seen:
                        seen.add(real)
                        stack.append(Path(e.path))
                elif kind == "file" and e.name.lower().endswith(SUFFIXES):
                    out.append(Path(e.path))
            elif e.is_dir(follow_symlinks=False):
                seen.add(os.path.realpath(e.path))
                stack.append(Path(e.path))
            elif e.is_file(follow_symlinks=False) and e.name.lower().endswith(SUFFIXES):
                out.append(Path(e.path))
    return out


def _link_kind(link: Path) -> str:
    """'dir', 'file' or 'other' for what a symbolic link leads to; UnreadableFileError for a loop, or for a
    form file's link to nothing."""
    try:
        mode = link.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableFileError(
                f"{link}: a symbolic link loop (it leads back to itself: {os.readlink(link)}); anything meant to be "
                "behind it would be left out of the ingest. Point the link at a real directory or remove it.") from exc
        if isinstance(exc, FileNotFoundError):
            if link.name.lower().endswith(SUFFIXES):
                raise UnreadableFileError(
                    f"{link}: a symbolic link to {os.readlink(link)}, which does not exist; the file would be left "
                    "out of the ingest. Restore the target or remove the link.") from exc
            return "other"
        raise UnreadableFileError(f"{link}: cannot follow this symbolic link ({exc.strerror or exc}); its files "
                                  "would be left out of the ingest. Fix it or leave it out of the sources.") from exc
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


@functools.lru_cache(maxsize=4096)
def _real_dir(d: str) -> Path:
    return Path(os.path.realpath(d))


def _resolved(p: Path) -> Path:
    """Absolute path through its resolved directory (one realpath per directory, not per file)."""
    return _real_dir(str(p.absolute().parent)) / p.name


def _readable_suffix(p: Path) -> bool:
    return p.name.lower().endswith(SUFFIXES)
