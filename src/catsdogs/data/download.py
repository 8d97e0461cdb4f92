"""``catsdogs data download``: fetch Microsoft's "Kaggle Cats and Dogs" archive and extract it.

The archive (``kagglecatsanddogs_5340.zip``, the Asirra photos; the same file TensorFlow Datasets'
``cats_vs_dogs`` uses) is downloaded to ``<to>/kagglecatsanddogs_5340.zip.part`` with a progress
bar. An interrupted download resumes with an HTTP ``Range`` request (or restarts when the server
does not support ranges). The archive is verified (size, optional SHA-256, and every member's
CRC via ``zipfile.testzip``) before ``PetImages/`` is extracted (into a temporary folder, then
renamed into place).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile

from tqdm.auto import tqdm

from catsdogs.errors import DataError

PETIMAGES_URL = ("https://download.microsoft.com/download/3/E/1/"
                 "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip")
"""The official download address (Microsoft Download Center, id 54765)."""
PETIMAGES_SHA256 = ""
"""Expected SHA-256 of the archive; empty means: rely on the size and the zip CRC checks."""
ARCHIVE_NAME = "kagglecatsanddogs_5340.zip"
CHUNK = 1 << 20


def _offline_hint(url: str, target: str, exc: Exception) -> DataError:
    return DataError(
        f"cannot download {url} ({exc}). If this machine is offline, copy the photos here "
        f"yourself: put {ARCHIVE_NAME} in {target} and run this command again, or pass a local "
        "folder to `catsdogs train --data DIR`.")


def _fetch(url: str, part: str, progress: bool, timeout: float) -> None:
    """Download ``url`` into ``part``, resuming from its current size when possible."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "catsdogs"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the part file is complete
            return
        raise
    with response:
        if have and response.status != 206:  # the server ignored Range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=ARCHIVE_NAME,
                                          disable=not progress) as bar:
            while chunk := response.read(CHUNK):
                fh.write(chunk)
                bar.update(len(chunk))
        if total is not None and os.path.getsize(part) != total:
            raise DataError(f"download of {url} ended early ({os.path.getsize(part):,} of "
                            f"{total:,} bytes); run the command again to resume")


def verify_archive(path: str, sha256: str = "") -> None:
    """Check the archive: optional SHA-256, a readable zip, every member's CRC, a PetImages/ folder.

    Raises:
        DataError: any check fails (the message says which).
    """
    if sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256.lower():
            raise DataError(f"{path}: SHA-256 mismatch (got {digest.hexdigest()}, expected "
                            f"{sha256}); the file is corrupt or not the official archive")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a valid zip archive ({exc})") from None
    if bad is not None:
        raise DataError(f"{path}: member {bad} fails its CRC check; the download is corrupt")
    if not any(n.startswith("PetImages/") for n in names):
        raise DataError(f"{path}: no PetImages/ folder inside; not the Cats and Dogs archive")


def download_petimages(to: str = "data", url: str = PETIMAGES_URL, sha256: str = PETIMAGES_SHA256,
                       progress: bool = True, timeout: float = 60.0) -> str:
    """Download, verify and extract the archive; return the path of ``<to>/PetImages``.

    Safe to run again: a finished extraction is reused, a partial download resumes, and a corrupt
    archive is deleted (with a message) so the next run starts clean.

    Raises:
        DataError: offline or unreachable (with what to do instead), HTTP error, failed checks.
    """
    os.makedirs(to, exist_ok=True)
    target = os.path.join(to, "PetImages")
    marker = os.path.join(target, ".catsdogs-complete")
    if os.path.exists(marker):
        print(f"{target} already downloaded and extracted")
        return target
    archive = os.path.join(to, ARCHIVE_NAME)
    if not os.path.exists(archive):
        part = archive + ".part"
        try:
            _fetch(url, part, progress, timeout)
        except urllib.error.HTTPError as exc:
            raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise _offline_hint(url, to, getattr(exc, "reason", exc)) from None
        os.replace(part, archive)
    try:
        verify_archive(archive, sha256)
    except DataError:
        os.unlink(archive)
        raise
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=to)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if m.filename.startswith("PetImages/")]
            for m in tqdm(members, desc="extract", unit="file", disable=not progress):
                zf.extract(m, tmp)  # zipfile strips absolute paths and '..' components
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(os.path.join(tmp, "PetImages"), target)
        open(marker, "w").close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
