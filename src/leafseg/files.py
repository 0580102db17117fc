"""Files leafseg writes and reads: one atomic write for files and one for folders, JSON/CSV writers, hashing.

Every file or folder leafseg produces is written beside its final place under a temporary name and renamed into
place, so a reader (or a run interrupted at any moment) sees the old version or the complete new one, never a part.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def _as_umask_allows(path: Path, mode: int) -> None:
    """tempfile makes private files (0600) and folders (0700): give what leafseg writes the permissions any
    other file the user creates would have (a colleague may need to read the masks and reports)."""
    os.chmod(path, mode & ~_umask())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` writes the content to the temporary path ``tmp`` (same folder, same suffix), which then
    replaces ``path`` in one rename. On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends like the final one (".nii.gz" too): writers that pick the format by name need that
    # and stays within the file system's 255 bytes when the final name is near that limit itself
    suffix = f".tmp{''.join(path.suffixes)}"[-40:]
    head = path.name.encode()[:100].decode(errors="ignore")  # bytes, not characters, are what the limit counts
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{head}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _as_umask_allows(tmp, 0o666)
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a file-size limit, a name too long...: one line naming the file
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


#: errors a full disk (or a quota, or a file-size limit) gives
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def write_error(path: str | os.PathLike, err: BaseException) -> OSError:
    """An OSError naming the file that could not be written and why, with a hint where the disk looks full."""
    code = getattr(err, "errno", None)
    text = str(err).strip()
    reason = getattr(err, "strerror", None) or (text.splitlines()[0] if text else type(err).__name__)
    hint = "; disk full?" if code in DISK_FULL or "unexpected pos" in str(err) else ""
    return OSError(code or errno.EIO, f"could not write {path} ({reason}{hint})")


def write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # numpy arrays and scalars, without importing numpy here
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # strict JSON has no nan/inf
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Strict JSON (nan/inf -> null, numpy -> Python, paths -> strings), indented, atomically. Anything else that is
    not JSON raises TypeError before the file is touched."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return write_text(text, path)


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Dicts as CSV (columns: keys in first-seen order; nan written as ``nan``), atomically."""
    fields = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parsed JSON; a missing or malformed file raises an error that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid {what} ({err})") from None


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place; the old one is removed only after the new one is there."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on normal exit it replaces ``final`` (see
    :func:`replace_dir`), on an error it is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _as_umask_allows(tmp, 0o777)
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def user_cache() -> Path:
    """leafseg's folder in the user's cache: ``$XDG_CACHE_HOME/leafseg``, else ``~/.cache/leafseg`` (not created)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "leafseg"


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def folder_digest(folder: str | os.PathLike, suffixes: Sequence[str] = (".safetensors", ".bin", ".json"),
                  exclude: Callable[[Path], bool] = lambda rel: False) -> str:
    """sha256 over the names and bytes of the files below ``folder`` with the given suffixes (sorted), skipping
    those whose relative path ``exclude`` accepts: identifies a saved model."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if f.is_file() and f.suffix in suffixes and not exclude(rel):
            digest.update(str(rel).encode())
            digest.update(sha256_file(f).encode())
    return digest.hexdigest()


OUTPUT_MARK = ".leafseg-output"  # in every output folder leafseg made: the only kind --overwrite may empty


def same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file or folder (after resolving links); False when either cannot be read."""
    try:
        return Path(a).resolve() == Path(b).resolve() or Path(a).samefile(b)
    except OSError:
        return False


def _overlaps(a: Path, b: Path) -> bool:
    """Whether one of two resolved paths equals or lies inside the other."""
    return a == b or a in b.parents or b in a.parents


def check_output(folder: str | os.PathLike, overwrite: bool, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """:func:`prepare_output`'s checks alone, touching nothing: the folder it may write (or, with ``overwrite``,
    replace)."""
    out = Path(folder)
    if out.is_symlink():  # emptying or filling it would act on what it points to, not on the folder named
        raise ValueError(f"{out}: the output folder is a link (to {os.readlink(out)}); give a real folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: output is a file, not a folder")
    for given in inputs:
        if _overlaps(out.resolve(), Path(given).resolve()):
            raise ValueError(f"{out}: the output folder would hold, or lie inside, the input {given}: choose an "
                             "output folder apart from the inputs and the model")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: output folder is not empty (choose another, or pass --overwrite to "
                                  "replace its contents)")
        if not (out / OUTPUT_MARK).is_file():
            raise FileExistsError(f"{out}: --overwrite only empties a folder leafseg wrote (it holds {OUTPUT_MARK}); "
                                  "this one was not, so nothing in it was touched: choose another output folder")
    return out


def mark_output(folder: Path) -> Path:
    """Put :data:`OUTPUT_MARK` into a folder leafseg writes, so a later ``--overwrite`` may replace it."""
    (folder / OUTPUT_MARK).write_text("written by leafseg; --overwrite may empty this folder\n", encoding="utf-8")
    return folder


def prepare_output(folder: str | os.PathLike, overwrite: bool, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """An empty output folder: a folder that already holds files is refused (or, with ``overwrite``, emptied), so
    the results of two runs never mix. Nothing a user made is removed: an output that is, holds or lies inside one
    of ``inputs`` (images, datasets, the model) is refused, and ``overwrite`` only empties a folder leafseg made
    (it carries :data:`OUTPUT_MARK`)."""
    out = check_output(folder, overwrite, inputs)
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return mark_output(out)
