"""Guards for the tools that write files (``utils.dataset convert / subset / split``,
``utils.param_surgery``, ``utils.export``, ``utils.predict``): an output never lands on an input, and an
existing output is replaced only when the user passed ``--overwrite``. :func:`atomic_output` is how
every output is written: complete under its name, or not at all.

An output *is* an input when both paths resolve (symbolic links followed) to the same place, or
name the same file (hard links); an output folder clobbers an input that lies inside it.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator


class OutputPathError(ValueError):
    """An output path that would overwrite an input, or an existing file, without ``--overwrite``."""


def real(path: str | Path) -> Path:
    """``path`` absolute, ``~`` expanded and every symbolic link (the last part's too) resolved."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both already :func:`real`)."""
    return path == folder or folder in path.parents


def _inode(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symbolic links
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def refuse_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path], hint: str,
                  error: type[Exception] = OutputPathError) -> None:
    """Raise ``error`` (one line: the output, the input and ``hint``, the fix) when an output file
    is, or resolves to, one of the ``inputs`` (the same resolved path, or a hard link of it)."""
    by_real: dict[Path, str | Path] = {}
    by_inode: dict[tuple[int, int], str | Path] = {}
    for p in inputs:
        by_real.setdefault(real(p), p)
        inode = _inode(p)
        if inode is not None:
            by_inode.setdefault(inode, p)
    for out in outputs:
        hit = by_real.get(real(out))
        if hit is None:
            inode = _inode(out)
            hit = by_inode.get(inode) if inode is not None else None
        if hit is not None:
            same = "" if str(out) == str(hit) else f" (it resolves to the input {hit})"
            raise error(f"{out}: this output is an input{same}, which is never written over; {hint}")


def refuse_existing(outputs: Iterable[str | Path], overwrite: bool, hint: str,
                    error: type[Exception] = OutputPathError) -> None:
    """Unless ``overwrite``, raise ``error`` (one line) when an output already exists."""
    if overwrite:
        return
    existing = [p for p in outputs if os.path.lexists(p)]
    if existing:
        more = f" (and {len(existing) - 1} more output files)" if len(existing) > 1 else ""
        raise error(f"{existing[0]}: exists{more}; pass --overwrite to replace it, or {hint}")


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """``with atomic_output(path) as tmp:`` write the file ``tmp``, a hidden ``.<name>.tmp<pid><suffix>`` beside
    ``path`` (``suffix``: for a writer that insists on one, such as OpenVINO's ``.xml``; otherwise the name ends
    in no data suffix, so no reader's ``*.xml`` / ``*.txt`` / ``*.png`` listing ever takes a leftover for data).
    When the block ends without an error ``tmp`` replaces the file in one rename, with the mode the file had;
    otherwise it is removed and the file is left as it was. A symbolic link at ``path`` is written through (the
    file it names is replaced, beside itself, so the rename never crosses file systems). An interrupted run, a
    crash of the process or a full disk never leaves half a file under the final name (checkpoints, which must
    also survive a power loss, are fsynced as well: ``core.engine.checkpoint``). ``path``'s folder is created
    if missing. Writers that pick a format by the name are given it (``savefig(tmp, format="png")``)."""
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        if target.exists():
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
