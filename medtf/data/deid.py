"""De-identification of patient identifiers: a keyed hash (HMAC-SHA256) instead of the raw ID.

The key comes from ``--id-salt`` or, by default, from a generated secret kept in a file *beside* the output
folder (``<output>.idkey``, mode 0600), never inside it: shards and manifest can be shared without it, and the
same key re-used on the next run gives the same hashed IDs (byte-identical re-runs, linkable datasets).
The manifest records only a fingerprint of the key, so a user can tell which key a dataset was made with.

DICOM UIDs (Study/Series/SOP Instance, Frame of Reference; often also file names) identify a patient's data in
the hospital's archive, so text written to an output file passes through `IdHasher.scrub`, which replaces every
UID by its own keyed pseudonym ``uid-<16 hex>``: equal UIDs stay equal (a frame-of-reference mismatch still
shows two different values) and nothing leads back to the archive without the key. UIDs defined by the DICOM
standard itself (``1.2.840.10008.*``: SOP classes, transfer syntaxes) identify nothing and are kept.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

# A DICOM UID (PS3.5 9.1): numeric components without leading zeros, the first 0, 1 or 2; four or more of them
# (shorter dotted numbers are versions and decimals); not inside a longer number (``CT.1.2.3.4.dcm`` holds the
# UID ``1.2.3.4``).
UID_PATTERN = re.compile(r"(?<![0-9])[0-2](?:\.(?:0|[1-9][0-9]*)){3,}(?![0-9])")
STANDARD_UID_ROOT = "1.2.840.10008."


def key_file_for(output_dir: str | os.PathLike) -> Path:
    out = Path(output_dir).resolve()
    return out.parent / f"{out.name}.idkey"


def load_or_create_key(output_dir, id_salt: str | None = None, key_file: str | os.PathLike | None = None) -> bytes:
    """The hashing key: ``id_salt`` if given, else the key file's content (created with a fresh secret)."""
    if id_salt:
        return id_salt.encode("utf-8")
    path = Path(key_file) if key_file else key_file_for(output_dir)
    if not path.exists():
        _create_key_file(path)
    key = path.read_text().strip()
    if not key:
        raise ValueError(f"{path}: id key file is empty")
    return key.encode("utf-8")


def _create_key_file(path: Path) -> None:
    """Write a fresh secret to ``path`` unless another process got there first.

    Several processes may start at once (the tasks of a conversion job array): the key is written to a private
    temporary file and hard-linked into place, so ``path`` appears complete or not at all, and exactly one key wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it: use theirs
    finally:
        tmp.unlink(missing_ok=True)


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"medtf-id-key-fingerprint:" + key).hexdigest()[:16]


class IdHasher:
    """Maps raw identifiers to stable pseudonyms ``<prefix>-<16 hex>``, and scrubs them out of free text.

    Example:
        >>> h = IdHasher(b"secret")
        >>> h("TCGA_CS_4941") == h(" TCGA_CS_4941 ")
        True
    """

    def __init__(self, key: bytes, prefix: str = "p"):
        self._key = key
        self.prefix = prefix
        self._seen: dict[str, str] = {}
        self._uids: IdHasher | None = None  # pseudonyms of DICOM UIDs, made on first use

    def __call__(self, raw: str) -> str:
        raw = str(raw).strip()
        if not raw:
            raise ValueError("cannot hash an empty identifier")
        if raw not in self._seen:
            digest = hmac.new(self._key, raw.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]
            self._seen[raw] = f"{self.prefix}-{digest}"
        return self._seen[raw]

    def scrub(self, text: str, raw_ids, replacement: str | None = None) -> str:
        """Replace every occurrence of any raw id in ``text`` (paths, error messages), then every DICOM UID.

        Each id becomes ``replacement`` when given (e.g. the patient's pseudonym for all of one case's
        identifiers, so a failure stays traceable with the key), else its own pseudonym. Each DICOM UID becomes
        its own ``uid-<16 hex>`` pseudonym (see the module docstring).
        """
        for raw in sorted({str(r).strip() for r in raw_ids if str(r).strip()}, key=len, reverse=True):
            text = re.sub(re.escape(raw), replacement or self(raw), text, flags=re.IGNORECASE)
        return scrub_uids(text, self._uid_hasher())

    def _uid_hasher(self) -> "IdHasher":
        if self._uids is None:
            self._uids = IdHasher(self._key, prefix="uid")
        return self._uids


def scrub_uids(text: str, pseudonym) -> str:
    """``text`` with every DICOM UID except the standard's own (``1.2.840.10008.*``) replaced by
    ``pseudonym(uid)``.

    Example:
        >>> scrub_uids("FrameOfReferenceUID 1.2.826.0.1.3680043.2.1 differs", lambda uid: "uid-x")
        'FrameOfReferenceUID uid-x differs'
    """
    def replace(match: re.Match) -> str:
        uid = match.group(0)
        return uid if uid.startswith(STANDARD_UID_ROOT) else pseudonym(uid)

    return UID_PATTERN.sub(replace, text)
