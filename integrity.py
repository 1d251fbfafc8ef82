"""integrity.py: files that survive a crash and prove on reading that they are the bytes once written.

  replace_durably        a finished temp file renamed over its path, fsynced first: the old file or the new
  writing                a write that fails (a full disk, a file-size limit) names the file it was writing
  save_safetensors       a safetensors file with its SHA-256 beside it, in <name>.sha256 (sha256sum's format)
  check_digest           the file's bytes against that digest, before anything is read from it
  check_finite           every floating-point tensor of the file finite, or the first one that is not, by name

A checkpoint and its digest are two files, and no rename replaces two files at once. So save_safetensors
writes the new digest beside the old one first, renames the checkpoint, then drops the old digest: a crash
at any point leaves a checkpoint whose digest is among those recorded, and check_digest accepts any of them.
A file from before digests were kept has no .sha256 file; check_digest says so (False) and the caller warns.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

DIGEST_SUFFIX = ".sha256"
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


class DamagedFile(ValueError):
    """A file whose bytes differ from its recorded digest, or that holds nan or inf; the message says which
    file, what is wrong and what to do."""


class WriteError(OSError):
    """A write that failed, with the file it was writing in its message (`writing`); errno as the OS gave it."""

    def __init__(self, number: int | None, message: str):
        super().__init__(message)
        self.errno = number


def replace_durably(temp: Path, path: Path) -> None:
    """Rename a finished temp file over `path`, its bytes on disk first (fsync) and the rename after (fsync
    of the folder): a power loss leaves the old file or the new one, never a renamed empty one."""
    with open(temp, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextlib.contextmanager
def writing(path: Path, temp: Path | None = None):
    """Name `path` in the error of a write that fails for lack of room. Python's OSError from a write or a
    close, and safetensors' error, carry no file name then ("[Errno 28] No space left on device"); an error
    that names its file already (a missing folder, a permission) passes as it is. A half-written `temp` is
    removed, so the space it took is free again and the previous `path` stays as it was."""
    try:
        yield
    except (OSError, SafetensorError) as error:
        if temp is not None:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            if isinstance(error, WriteError) or error.filename is not None:
                raise
            number, reason = error.errno, error.strerror or str(error)
        else:  # safetensors words it "Error while serializing: I/O error: File too large (os error 27)"
            found = re.search(r"os error (\d+)", str(error))
            number = int(found.group(1)) if found else None
            reason = os.strerror(number) if number is not None else str(error)
        raise WriteError(number, f"cannot write {path}: {reason}; make room there (or lift the file-size "
                                 "limit) and run again") from None


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_digests(path: Path) -> list[str] | None:
    """The digests recorded for `path` (one; two or three while a save is switching files), or None when it
    has no digest file."""
    sidecar = digest_path(path)
    if not sidecar.exists():
        return None
    digests = [line.split()[0] for line in sidecar.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not digests or not all(HEX_DIGEST.fullmatch(d) for d in digests):
        raise DamagedFile(f"{sidecar} is not a SHA-256 digest file (one '<64 hex digits>  <name>' line), so "
                          f"{path} cannot be verified; restore both files, or delete {sidecar.name} to read "
                          f"{path} unverified")
    return digests


def _write_digests(path: Path, digests: list[str]) -> None:
    sidecar = digest_path(path)
    temp = sidecar.with_name(sidecar.name + ".tmp")
    with writing(sidecar, temp):
        temp.write_text("".join(f"{digest}  {path.name}\n" for digest in digests), encoding="utf-8")
        replace_durably(temp, sidecar)


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """`tensors` to `path` (via a temp file and a rename), with its SHA-256 in `path`.sha256: the new
    digest is recorded beside the one of the file in place before the rename and alone after it, so a
    crash anywhere leaves a file that its digest file vouches for (module docstring)."""
    temp = path.with_name(path.name + ".tmp")
    with writing(path, temp):
        save_file(tensors, str(temp), metadata=metadata)
        new = file_sha256(temp)
        try:
            in_place = recorded_digests(path) if path.exists() else []
        except DamagedFile:  # an unreadable digest file is replaced below
            in_place = None
        if in_place is None:  # a file without a (readable) digest file: vouch for it while it stays
            in_place = [file_sha256(path)]
        _write_digests(path, [new] + [d for d in in_place if d != new])
        replace_durably(temp, path)
    _write_digests(path, [new])


def check_digest(path: Path, advice: str) -> bool:
    """True when `path`'s bytes match its recorded SHA-256; False when it has no digest file (written
    before digests were kept: the caller warns); DamagedFile, naming the file and saying `advice`, when
    they differ."""
    recorded = recorded_digests(path)
    if recorded is None:
        return False
    actual = file_sha256(path)
    if actual not in recorded:
        raise DamagedFile(f"{path} does not match the SHA-256 recorded in {digest_path(path).name} when it was "
                          f"written (recorded {recorded[0][:16]}..., its bytes now give {actual[:16]}...): the "
                          f"file changed since; {advice}")
    return True


def warn_unverified(path: Path) -> None:
    print(f"WARNING: {path} has no {digest_path(path).name} beside it (written before digests were kept), so "
          "its bytes cannot be verified; reading it as it is", file=sys.stderr)


def check_finite(path: Path, label: str, advice: str) -> None:
    """Every floating-point tensor of the safetensors file `path` finite, or DamagedFile naming the first
    that is not: "<label> <path> holds NaN in <tensor>; <advice>"."""
    with safe_open(str(path), framework="pt") as file:
        for key in file.keys():
            tensor = file.get_tensor(key)
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                what = "NaN" if torch.isnan(tensor).any() else "inf"
                raise DamagedFile(f"{label} {path} holds {what} in {key}; {advice}")
