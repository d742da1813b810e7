"""The POSIX pax tar members a backup stream is made of, and the names a stream may hold.

Python's :mod:`tarfile` reads every member synfast writes, sparse ones
included, and :mod:`synfast.backup.unstream` reads streams with it.  It cannot
write sparse members, and its pax writer adds a ``size`` record above 8 GiB that
GNU tar's sparse reader rejects, so headers are built here (about a hundred
lines; tested against GNU tar, bsdtar and ``tarfile``):

- every member is a ustar header, preceded by a pax extended header (type
  ``x``) when a field does not fit ustar (long or non-ASCII names, large ids,
  sub-second times);
- a file with holes is a GNU sparse 1.0 member: ustar name
  ``GNUSparseFile.0/NAME``, pax records ``GNU.sparse.major=1``,
  ``GNU.sparse.minor=0``, ``GNU.sparse.name`` and ``GNU.sparse.realsize`` (and
  never ``size``), then, as the member's data, the map (the count, then
  offset and length of every data segment, in decimal, one per line, ending
  with an empty segment at the file's size when it ends in a hole; NUL padded
  to 512 bytes) and the data segments back to back; the ustar size
  field (base-256 from 8 GiB up) holds map plus data;
- the stream ends with two zero blocks.
"""

from __future__ import annotations

import posixpath
import stat

BLOCK = 512
END = bytes(2 * BLOCK)

REG, DIR, SYMLINK, PAX = b"0", b"5", b"2", b"x"


def padding(size: int) -> bytes:
    """The NUL bytes that round a member's data of ``size`` bytes up to a block."""
    return bytes(-size % BLOCK)


def _pax_record(key: str, value: str) -> bytes:
    """One ``"LEN KEY=VALUE\\n"`` record; LEN counts itself."""
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _number(value: int, width: int) -> bytes:
    """A ustar numeric field: octal, or base-256 when octal does not fit."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    if value < 0 or value >= 256 ** (width - 1):
        raise ValueError(f"{value} does not fit a tar header field")
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
           kind: bytes, linkname: bytes = b"") -> bytes:
    h = bytearray(BLOCK)
    h[0:len(name)] = name
    h[100:108] = _number(mode & 0o7777, 8)
    h[108:116] = _number(uid if uid < 0o7777777 else 0, 8)
    h[116:124] = _number(gid if gid < 0o7777777 else 0, 8)
    h[124:136] = _number(size, 12)
    h[136:148] = _number(max(0, mtime) if mtime < 8 ** 11 else 0, 12)
    h[148:156] = b" " * 8
    h[156:157] = kind
    h[157:157 + len(linkname)] = linkname
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _fits(text: str, limit: int) -> bytes | None:
    """``text`` as a ustar field if it is ASCII and fits, else None."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    return raw if len(raw) <= limit else None


def header(name: str, kind: bytes, *, mode: int, uid: int, gid: int, mtime_ns: int,
           size: int = 0, linkname: str = "", sparse_map: list[tuple[int, int]] | None = None,
           realsize: int = 0) -> bytes:
    """The header block(s) of one member, pax extension included; for a sparse
    member (``sparse_map`` given) also the map, so that the data segments come
    next.  ``size`` is the data that follows (for a sparse member: the sum of
    the map's lengths)."""
    records: list[bytes] = []
    sec, frac = divmod(mtime_ns, 1_000_000_000)
    if frac:
        records.append(_pax_record("mtime", f"{sec}.{frac:09d}".rstrip("0")))
    if uid >= 0o7777777:
        records.append(_pax_record("uid", str(uid)))
    if gid >= 0o7777777:
        records.append(_pax_record("gid", str(gid)))
    link = b""
    if linkname:
        raw_link = _fits(linkname, 100)
        if raw_link is None:
            records.append(_pax_record("linkpath", linkname))
        else:
            link = raw_link
    body = b""
    if sparse_map is not None:
        base = posixpath.basename(name).encode("ascii", "replace")[:80]
        dirname = posixpath.dirname(name).encode("ascii", "replace")
        ustar_name = (dirname + b"/" if dirname else b"") + b"GNUSparseFile.0/" + base
        ustar_name = ustar_name[-100:]
        records += [_pax_record("GNU.sparse.major", "1"), _pax_record("GNU.sparse.minor", "0"),
                    _pax_record("GNU.sparse.name", name),
                    _pax_record("GNU.sparse.realsize", str(realsize))]
        if not sparse_map or sum(sparse_map[-1]) < realsize:
            # GNU tar sizes the file by its map's last segment: a file that
            # ends in a hole ends its map with an empty segment at its size.
            sparse_map = [*sparse_map, (realsize, 0)]
        lines = [str(len(sparse_map))] + [f"{o}\n{n}" for o, n in sparse_map]
        body = ("\n".join(lines) + "\n").encode()
        body += padding(len(body))
        size += len(body)
    else:
        raw_name = _fits(name, 100)
        if raw_name is None:
            records.append(_pax_record("path", name))
            ustar_name = name.encode("utf-8", "replace")[:100]
        else:
            ustar_name = raw_name
    out = b""
    if records:
        ext = b"".join(records)
        out = _ustar(b"PaxHeaders/" + ustar_name[-89:], 0o644, 0, 0, len(ext), sec, PAX)
        out += ext + padding(len(ext))
    return out + _ustar(ustar_name, mode, uid, gid, size, sec, kind, link) + body


def kind_of(mode: int) -> bytes:
    """The member type of a file of ``mode`` (directories, files, symlinks only)."""
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    return REG


def safe_name(name: str) -> str | None:
    """The relative path a member called ``name`` stands for (a leading ``./``
    and trailing ``/`` removed), or None when it is absolute, climbs with
    ``..``, or is empty: the names a stream from elsewhere may not use."""
    if name.startswith("/") or "\0" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)
