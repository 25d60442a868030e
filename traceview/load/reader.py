"""Files -> ``Trace``: reading (plain or gzip, with a decompression cap), decoding, metadata."""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import re
import sys
import tempfile
import types
import zlib
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import polars as pl

from .identity import identity_from_name
from ..errors import NotATraceError, TraceError
from . import decode, fast
from .health import no_gpu_activity_reason
from .trace import GPU_KINDS, KIND_DTYPE, Trace

def parse_size(value: object) -> int | None:
    """'16G', '500M', '1.5g', '1024' -> bytes (K/M/G/T are powers of 1024); None if not a positive size."""
    v = str(value).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(v[-1:], 1)
    try:
        n = int(float(v[:-1] if mult > 1 else v) * mult)
    except (ValueError, OverflowError):  # not a number, NaN, infinity
        return None
    return n if n > 0 else None


#: Default cap on the bytes one file may decompress to (a gzip bomb stops here): 16 GiB, or
#: TRACEVIEW_MAX_BYTES (a value that is not a size is reported by the CLI's --max-bytes).
DEFAULT_MAX_BYTES = parse_size(os.environ.get("TRACEVIEW_MAX_BYTES", "")) or 16 << 30



def read_bytes(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes | bytearray:
    """The file's JSON bytes, gunzipped when it starts with the gzip magic (all in memory)."""
    with open_source(path, max_bytes, spill_bytes=None) as src:
        return bytes(src.raw)


@dataclass(frozen=True)
class GzipDamage:
    """What was wrong with a gzip stream and what the loader did about it: the warning of a
    load that goes on, and (``what`` alone) the cause named by a load that then fails."""

    what: str
    kept: str
    explains_failure: bool = True  # False for junk after whole members: the members were fine

    @property
    def warning(self) -> str:
        return f"{self.what}: {self.kept}"


class Source:
    """A trace file's JSON bytes, without holding them in memory.

    A plain file is memory-mapped (pages are read on demand and stay in the page cache, not
    in this process); a gzip file is decompressed into memory, or into an unlinked temporary
    file once it grows past ``spill_bytes``.  ``raw`` supports slicing, ``find``/``rfind``
    and ``re`` searches; ``read`` returns one piece as bytes; ``file`` names what worker
    processes can open to read pieces themselves (None when the bytes live only here).
    """

    def __init__(self, raw, file: Path | None = None, cleanup: Callable[[], None] | None = None) -> None:
        self.raw = raw
        self.file = file
        self._cleanup = cleanup
        self.gzip_damage: GzipDamage | None = None
        self.encoding: str | None = None  # a UTF-16/32 original (re-encoded as UTF-8)
        # Pieces of a mapped file are read with pread: slicing the map would leave every page
        # read resident in this process (RSS would grow to the file's size).
        self._fd = os.open(file, os.O_RDONLY) if file is not None else None

    def __len__(self) -> int:
        return len(self.raw)

    def read(self, offset: int, length: int) -> bytes:
        if self._fd is not None:
            return os.pread(self._fd, length, offset)
        return bytes(self.raw[offset: offset + length])

    def blank(self) -> bool:
        return _NON_SPACE.search(self.raw) is None

    def drop_nul_tail(self) -> int:
        """Forget the NUL bytes the data ends with (a file zero-filled after a crash: NUL is
        never valid JSON text), reading only that tail; how many there were."""
        n = end = len(self.raw)
        while end > 0 and self.raw[end - 1: end] == b"\0":
            begin = max(0, end - (1 << 20))
            end = begin + len(self.raw[begin:end].rstrip(b"\0"))
            if end > begin:
                break
        if end == n:
            return 0
        if isinstance(self.raw, mmap.mmap):
            old = self.raw
            self.raw = mmap.mmap(self._fd, end, access=mmap.ACCESS_READ) if end else b""
            old.close()
        elif isinstance(self.raw, bytearray):
            del self.raw[end:]
        else:
            self.raw = self.raw[:end]
        return n - end

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if isinstance(self.raw, mmap.mmap):
            self.raw.close()
        self.raw = b""
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_NON_SPACE = re.compile(rb"\S")

#: gzip traces that decompress to more than this go to a temporary file, not memory.
SPILL_BYTES = 256 << 20


def open_source(path: Path, max_bytes: int = DEFAULT_MAX_BYTES, spill_bytes: int | None = SPILL_BYTES) -> Source:
    """Open a trace file for decoding (see ``Source``); errors are ``TraceError`` lines.

    The format is told by content, not by the file name: gzip, zstd, bzip2, xz, lz4 and
    one-member zip archives are decompressed; UTF-16/UTF-32 text is re-encoded as UTF-8.
    """
    try:
        src = _open_bytes(path, max_bytes, spill_bytes)
    except IsADirectoryError:
        raise TraceError(path, "is a directory") from None
    except FileNotFoundError:
        raise TraceError(path, missing_reason(Path(path))) from None
    except PermissionError:
        raise TraceError(path, "permission denied") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TraceError(path, "symlink loop (following the links never reaches a file)") from None
        raise TraceError(path, f"cannot read: {e.strerror or e}") from None
    try:
        return _as_utf8(path, src, max_bytes, spill_bytes)
    except BaseException:
        src.close()
        raise


def missing_reason(path: Path) -> str:
    """Why a path that does not open is missing: a dangling symlink or a loop says so."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "symlink loop (following the links never reaches a file)"
        return f"dangling symlink (its target {os.readlink(path)!r} does not exist)"
    return "no such file or directory"


#: Magic bytes -> the compression format they start (gzip is handled by ``_gunzip``).
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"PK\x03\x04", "zip"),
)


def compression_of(head: bytes) -> str | None:
    """The compression format whose magic bytes ``head`` starts with (None: not compressed)."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def _cut_magic(path: Path, data: bytes) -> None:
    """A whole file that is the start of a format's magic bytes (2 bytes or more: a stream cut
    inside its first bytes) is refused by the format's name, not as "not a trace"."""
    if len(data) >= 2:
        for magic, fmt in _MAGIC:
            if len(data) < len(magic) and magic.startswith(data):
                raise TraceError(path, empty_stream(fmt))


def empty_stream(fmt: str) -> str:
    """The reason of a compressed stream that ends before its first block gives any data."""
    if fmt == "zip":
        return "zip archive ends before its first member (truncated or empty)"
    return f"{fmt} stream ends before its first block (truncated or empty)"


def _open_bytes(path: Path, max_bytes: int, spill_bytes: int | None) -> Source:
    with open(path, "rb") as f:
        if not f.seekable():  # a pipe, e.g. <(zcat t.json.gz): read it whole, up to the cap
            data = bytearray()
            while len(data) <= max_bytes and (block := f.read(1 << 20)):
                data += block
            if len(data) > max_bytes:
                raise TraceError(path, f"more than {max_bytes} bytes (raise the limit with --max-bytes)")
            if compression_of(bytes(data[:8])) is None:
                _cut_magic(path, bytes(data[:8]))
                return Source(bytes(data))
            f = io.BytesIO(data)  # compressed: decompressed below like a file
        magic = f.read(8)
        f.seek(0)
        fmt = compression_of(magic)
        if fmt is None:
            size = len(f.getbuffer()) if isinstance(f, io.BytesIO) else os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise TraceError(path, f"file is {size} bytes, over the {max_bytes}-byte limit "
                                       "(raise it with --max-bytes)")
            if size == 0:
                return Source(b"")
            if size < 8:
                _cut_magic(path, magic)
            try:
                return Source(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), Path(path))
            except (OSError, ValueError):  # a pipe or a special file: read it
                return Source(f.read())
        sink = _Sink(spill_bytes)
        try:
            damage = _gunzip(path, f, max_bytes, sink) if fmt == "gzip" else _decompress(path, fmt, f, max_bytes, sink)
        except BaseException:
            sink.discard()
            raise
        src = sink.source()
        src.gzip_damage = damage
        return src


def _decompress(path: Path, fmt: str, f, max_bytes: int, out: "_Sink") -> GzipDamage | None:
    """zstd / bzip2 / xz / lz4 / zip into ``out``, up to the cap.  As for gzip: concatenated
    streams are read in order, a stream cut short or corrupt keeps what decompressed before
    the damage (with a note), bytes after the last stream that are not one are ignored."""
    if fmt == "zip":
        return _unzip(path, f, max_bytes, out)
    new = _decompressor(path, fmt)
    magic = next(m for m, name in _MAGIC if name == fmt)
    d, fed, at, opened = new(), 0, 0, False

    def over() -> None:
        if len(out) > max_bytes:
            raise TraceError(path, f"{fmt} data decompresses to more than {max_bytes} bytes "
                                   "(a bomb?); raise the limit with --max-bytes")

    try:
        while block := f.read(1 << 14):  # (16 KiB of input: bounded output per call, even for zstd)
            at += len(block)
            while block:
                opened = True
                if fmt == "zstd":
                    out += d.decompress(block)
                else:
                    out += d.decompress(block, 1 << 24)
                    over()
                    while not d.eof and not d.needs_input:
                        out += d.decompress(b"", 1 << 24)
                        over()
                over()
                block = b""
                if d.eof:
                    opened = False
                    rest = d.unused_data or b""
                    if rest.startswith(magic):
                        d, block = new(), rest
                    elif rest.strip(b"\0") or f.read(1 << 14).strip(b"\0"):
                        return GzipDamage(f"the bytes after compressed byte {at - len(rest)} are not {fmt}",
                                          "ignored them", explains_failure=False)
    except TraceError:
        raise
    except Exception as e:  # each library has its own error type: all mean corrupt data
        if not len(out) or out.blank():
            raise TraceError(path, f"corrupt {fmt} data ({e})") from None
        return GzipDamage(f"{fmt} data is corrupt ({e}) near compressed byte {at}",
                          f"analyzed the {len(out)} bytes before the damage")
    if opened:
        if not len(out):
            raise TraceError(path, empty_stream(fmt))
        return GzipDamage(f"{fmt} stream is cut short", "analyzed what decompressed")
    return None


def _decompressor(path: Path, fmt: str) -> Callable[[], object]:
    """A factory of incremental decompressors (a well-kept library for each format)."""
    if fmt == "bzip2":
        import bz2
        return bz2.BZ2Decompressor
    if fmt == "xz":
        import lzma
        return lzma.LZMADecompressor
    if fmt == "zstd":
        try:
            import zstandard
        except ImportError:
            raise TraceError(path, "zstd-compressed: reading it needs the zstandard package "
                                   "(pip install zstandard)") from None
        return zstandard.ZstdDecompressor().decompressobj
    try:
        import lz4.frame
    except ImportError:
        raise TraceError(path, "lz4-compressed: reading it needs the lz4 package "
                               "(pip install 'traceview[lz4]', or decompress it with lz4 -d)") from None
    return lz4.frame.LZ4FrameDecompressor


def _unzip(path: Path, f, max_bytes: int, out: "_Sink") -> None:
    """A zip of one file is that file; several files are a run directory to extract."""
    import zipfile

    try:
        z = zipfile.ZipFile(f)
        members = [i for i in z.infolist() if not i.is_dir()]
        if len(members) != 1:
            names = ", ".join(i.filename for i in members[:5]) + (", ..." if len(members) > 5 else "")
            raise TraceError(path, f"a zip archive of {len(members)} files ({names}): extract it "
                                   "(unzip) and pass the directory or one file")
        with z.open(members[0]) as member:
            while block := member.read(1 << 20):
                out += block
                if len(out) > max_bytes:
                    raise TraceError(path, f"zip member decompresses to more than {max_bytes} bytes "
                                           "(a bomb?); raise the limit with --max-bytes")
    except TraceError:
        raise
    except zipfile.BadZipFile as e:
        if str(e) == "File is not a zip file":  # a local header, but no central directory at the end
            raise TraceError(path, "zip archive is cut short (it starts as one but its central directory, "
                                   "written last, is missing: truncated?)") from None
        raise TraceError(path, f"cannot read the zip archive (BadZipFile: {e})") from None
    except Exception as e:  # encrypted members, unknown methods, CRC errors, EOF
        raise TraceError(path, f"cannot read the zip archive ({type(e).__name__}: {e})") from None
    return None


#: Byte-order marks and, without one, the NUL pattern of a JSON text's first two ASCII
#: characters (RFC 8259 section 8.1 of the obsolete RFC 4627): which UTF-16/32 it is.
_WIDE = (
    (b"\x00\x00\xfe\xff", "utf-32-be", 4), (b"\xff\xfe\x00\x00", "utf-32-le", 4),
    (b"\xfe\xff", "utf-16-be", 2), (b"\xff\xfe", "utf-16-le", 2),
)
_WIDE_NO_BOM = (
    (re.compile(rb"\x00\x00\x00[^\x00]"), "utf-32-be"), (re.compile(rb"[^\x00]\x00\x00\x00"), "utf-32-le"),
    (re.compile(rb"\x00[^\x00]\x00[^\x00]"), "utf-16-be"), (re.compile(rb"[^\x00]\x00[^\x00]\x00"), "utf-16-le"),
)


def wide_encoding(head: bytes) -> tuple[str, int] | None:
    """(codec, BOM length) when ``head`` is UTF-16/UTF-32 text, else None."""
    for bom, codec, n in _WIDE:
        if head.startswith(bom):
            return codec, n
    for pattern, codec in _WIDE_NO_BOM:
        if pattern.match(head):
            return codec, 0
    return None


def _as_utf8(path: Path, src: Source, max_bytes: int, spill_bytes: int | None) -> Source:
    """``src`` itself, or (UTF-16/32 text) its text re-encoded as UTF-8; a tar archive is named."""
    head = src.read(0, 512)
    if len(head) >= 262 and head[257:262] == b"ustar":
        name = head[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        raise TraceError(path, f"a tar archive (first member {name!r}): extract it (tar xf) and pass the "
                               "directory of traces")
    wide = wide_encoding(head[:4])
    if wide is None:
        return src
    codec, bom = wide
    import codecs

    decoder = codecs.getincrementaldecoder(codec)("replace")
    sink = _Sink(spill_bytes)
    try:
        at, n = bom, len(src)
        while at < n:
            block = src.read(at, 1 << 20)
            at += len(block)
            sink += decoder.decode(block, final=at >= n).encode("utf-8", "replace")
            if len(sink) > max_bytes:
                raise TraceError(path, f"{codec} text re-encodes to more than {max_bytes} bytes of UTF-8 "
                                       "(raise the limit with --max-bytes)")
        out = sink.source()
    except BaseException:
        sink.discard()
        raise
    out.gzip_damage = src.gzip_damage
    out.encoding = codec
    src.close()
    return out


class _Sink:
    """Where decompressed bytes go: memory, then a temporary file past ``spill_bytes``."""

    def __init__(self, spill_bytes: int | None) -> None:
        self.spill_bytes = spill_bytes
        self.mem = bytearray()
        self.file = None
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __iadd__(self, data: bytes) -> "_Sink":
        self.size += len(data)
        if self.file is not None:
            self.file.write(data)
            return self
        self.mem += data
        if self.spill_bytes is not None and len(self.mem) > self.spill_bytes:
            try:
                self.file = tempfile.NamedTemporaryFile(prefix="traceview-", suffix=".json", delete=False)
                self.file.write(self.mem)
                self.mem = bytearray()
            except OSError:  # no room on disk: stay in memory
                self.spill_bytes, self.file = None, None
        return self

    def reset(self) -> None:
        self.discard()
        self.mem, self.size = bytearray(), 0

    def blank(self) -> bool:
        if self.file is None:
            return _NON_SPACE.search(self.mem) is None
        return self.size == 0  # a spilled sink holds > spill_bytes: checked after mapping

    def discard(self) -> None:
        if self.file is not None:
            name = self.file.name
            self.file.close()
            os.unlink(name)
            self.file = None

    def source(self) -> Source:
        if self.file is None:
            return Source(self.mem)
        self.file.flush()
        name = self.file.name
        raw = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        self.file.close()
        self.file = None

        def cleanup() -> None:
            try:
                os.unlink(name)
            except OSError:
                pass

        return Source(raw, Path(name), cleanup)


def _gunzip(path: Path, f, max_bytes: int, out: _Sink) -> GzipDamage | None:
    """Decompress into ``out``; the damage when the stream was cut short or is corrupt (what
    decompressed before it is kept), None when it is whole."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    member_open = False  # inside a gzip member whose end we have not seen yet
    try:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            while block:
                member_open = True
                out += d.decompress(block, max_bytes + 1 - len(out))
                if len(out) > max_bytes:
                    raise TraceError(path, f"decompresses to more than {max_bytes} bytes "
                                           "(gzip bomb?); raise the limit with --max-bytes")
                block = d.unconsumed_tail
                if d.eof:  # end of one member; concatenated members may follow
                    member_open = False
                    block = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    except zlib.error as e:
        # zlib drops the output of the call that failed: decompress again in small steps
        # so that everything before the damage (e.g. zeros after a crash) is kept.
        f.seek(0)
        out.reset()
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        at, verified = 0, -1  # compressed bytes fed so far; output of members whose CRC matched
        try:
            while len(out) <= max_bytes and (block := f.read(4096)):
                while block:  # 4 KiB of deflate data expands to at most ~4 MiB
                    saved = d.copy()
                    try:
                        out += d.decompress(block)
                    except zlib.error:  # again byte by byte, to keep all output before the damage
                        d = saved
                        for i in range(len(block)):
                            out += d.decompress(block[i: i + 1])
                            at += 1
                        raise
                    at += len(block)
                    block = b""
                    if d.eof:  # concatenated members
                        block, d = d.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
                        at -= len(block)
                        verified = len(out)
        except zlib.error:
            pass
        if len(out) == verified:  # whole members, then bytes that are not gzip (appended junk)
            return GzipDamage(f"the bytes after compressed byte {at} are not gzip ({e})", "ignored them",
                              explains_failure=False)
        if not out.blank():
            check = "data check" in str(e) or "length check" in str(e)  # CRC32 / ISIZE of the trailer
            return GzipDamage(f"gzip data is corrupt ({e}) at compressed byte {at}",
                              f"analyzed the {len(out)} bytes "
                              + ("that decompressed, which fail the gzip checksum" if check else
                                 "before the damage; the last values before it may be damaged"))
        raise TraceError(path, f"corrupt gzip data ({e})") from None
    if member_open:
        # Stream cut short (a job killed mid-write): keep what decompressed.
        if not len(out):
            raise TraceError(path, empty_stream("gzip"))
        return GzipDamage("gzip stream is cut short", "analyzed what decompressed")
    return None


def rank_from_filename(path: Path) -> int | None:
    """The rank a serving stack's naming convention puts in the file name (load/identity.py)."""
    return identity_from_name(path.name).rank


DUPLICATE_KEY_NOTE = ("'traceEvents' occurs twice: analyzed the last one (as JSON.parse does with a repeated "
                      "key); the first was ignored")

#: Files (decompressed) at least this big are decoded by worker processes when cores allow.
PARALLEL_MIN_BYTES = 96 << 20

Progress = Callable[[int, int], None]


def load(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES, workers: int | None = None,
         progress: Progress | None = None, chunk_bytes: int = decode.CHUNK_BYTES) -> Trace:
    """Load one trace file (``.json``, ``.json.gz``, Kineto object or bare Chrome array).

    ``workers``: processes decoding pieces of the file in parallel (None: one per core for
    files over ``PARALLEL_MIN_BYTES``, else in this process).  ``progress(done, total)`` is
    called with bytes decoded as the load goes.
    """
    damage: list[GzipDamage] = []  # filled by _load as soon as the file is opened
    try:
        return _load(Path(path), max_bytes, workers, progress, chunk_bytes, damage)
    except RecursionError:  # the JSON decoders recurse once per nesting level
        raise TraceError(path, "JSON nested too deeply (limit: a few hundred levels)") from None
    except MemoryError:  # (a memory limit: ulimit -v, a container) named, with the file's size
        raise TraceError(path, f"out of memory while loading it ({_size_text(path)}; a memory limit such as "
                               "ulimit -v or a container's is too small for it)") from None
    except BrokenProcessPool:  # a decoding worker was killed (the kernel's OOM killer, a signal)
        raise TraceError(path, f"a decoding worker process died while decoding it ({_size_text(path)}; "
                               "killed for memory? try --jobs 1 or more memory)") from None
    except TraceError as e:
        if damage and damage[0].explains_failure and "gzip" not in e.reason:  # the damage is the cause
            raise TraceError(e.path, f"{e.reason}; {damage[0].what}") from None  # (damaged, not "not a trace")
        raise


def _size_text(path) -> str:
    try:
        return f"{os.path.getsize(path):,} bytes on disk"
    except OSError:
        return "size unknown"


def _load(path: Path, max_bytes: int, workers: int | None, progress: Progress | None,
          chunk_bytes: int, damage: list[GzipDamage]) -> Trace:
    notes: list[str] = []
    with open_source(path, max_bytes) as src:
        if src.gzip_damage:
            damage.append(src.gzip_damage)
            notes.append(src.gzip_damage.warning)
        nuls = src.drop_nul_tail()
        if nuls:
            notes.append(f"the file ends in {nuls} NUL bytes (zero-filled after a crash?): ignored them")
        if src.blank():
            raise TraceError(path, "file is empty" + (f" (but for {nuls} NUL bytes)" if nuls else ""))
        raw = src.raw
        arr = decode.locate_events(raw)
        if arr is None:
            raise NotATraceError(path, "not a trace: no 'traceEvents' array and not a JSON array of events")
        # a bare JSON array holding something: if none of it is an event, it is not a trace at all
        listed = not arr.header and bytes(raw[:64]).lstrip().lstrip(b"\xef\xbb\xbf").startswith(b"[") \
            and bool(bytes(raw[arr.start: min(arr.end, arr.start + 4096)]).strip())
        if arr.duplicate:
            notes.append(DUPLICATE_KEY_NOTE)
        table = _Table()
        salvaged = False
        complete = arr.complete
        carry, carries = None, 0  # start of a piece whose cut fell inside a string: retried with the next
        total = max(1, arr.end - arr.start)
        with _Pieces(src, arr, chunk_bytes, _workers(workers, len(src))) as pieces:
            for offset, length, result in pieces:
                if carry is not None:
                    length, offset, result = offset + length - carry, carry, _NOT_RUN
                if table.add(src, offset, length, result):
                    carry = None
                    if progress is not None:
                        progress(offset + length - arr.start, total)
                    continue
                piece = src.read(offset, length)
                last_piece = offset + len(piece) >= arr.end
                # (bounded by size, not by count: names full of "}, {" can fail many cuts in a row)
                if not last_piece and length <= max(64 * chunk_bytes, 1 << 30) and decode.cut_short(piece):
                    carry, carries = offset, carries + 1
                    continue
                whole = decode.last_whole_events(piece)
                if last_piece and complete and decode.cut_short(piece):
                    complete = False  # the ']' taken for the array's end was inside the last, cut-off event
                if not complete and last_piece:
                    if whole is not None:
                        table.add_bytes(whole)
                    salvaged = True
                    break
                raise TraceError(path, f"invalid JSON in traceEvents near byte {offset + (len(whole) if whole else 0)}")
    del raw
    if not complete:
        if not table.rows:  # (salvaged or not: nothing whole came before the cut)
            raise TraceError(path, "file is truncated before its first complete event")
        notes.append("file is truncated (the writer stopped mid-file): analyzed every complete "
                     f"event up to the cut ({table.rows} events)")
    decode.match_begin_end(table.buf)
    for reason, n in sorted(table.skipped().items()):
        notes.append(f"{n} {reason} skipped")
    events = table.frame()
    if events.filter(pl.col("kind").is_in(GPU_KINDS)).height == 0:
        why = "; ".join(n for n in notes if n.endswith(" skipped") or n == DUPLICATE_KEY_NOTE)  # e.g. "ph": "x"
        if events.height == 0 and not why and complete and listed:  # a JSON list of something else (results)
            raise NotATraceError(path, "not a trace: none of its JSON objects is a trace event")
        launched = no_gpu_activity_reason(events)  # CPU side launched kernels: say why none are here
        if launched and not why:
            raise TraceError(path, launched)
        raise TraceError(path, "no GPU events (kernels, memcpys, memsets) in this trace" + (f" ({why})" if why else ""))
    header = arr.header
    dist = header.get("distributedInfo") or {}
    rank = _as_int(dist.get("rank"))
    if rank is None:
        rank = rank_from_filename(path)
    devices = [d for d in (header.get("deviceProperties") or []) if isinstance(d, dict)]
    return Trace(
        path=path,
        events=events,
        rank=rank,
        world_size=_as_int(dist.get("world_size")),
        devices=devices,
        metadata={k: v for k, v in header.items() if k != "deviceProperties"},
        warnings=notes,
        thread_names={v: k for k, v in table.buf.thread_ids.items()},
    )


def _workers(workers: int | None, size: int) -> int:
    if workers is not None:
        return max(1, workers)
    # (the compiled decoder runs in threads, which cost nothing to start: from two pieces on)
    least = 2 * decode.CHUNK_BYTES if fast.native.ENABLED else PARALLEL_MIN_BYTES
    return max(1, min(os.cpu_count() or 1, 8)) if size >= least else 1


_NOT_RUN = object()  # the fast path has not been tried on this piece yet


class _Pieces:
    """``(offset, length, fast result)`` for each run of events, in file order.

    With one worker the fast path runs here, lazily; with more, worker processes run it a
    few pieces ahead, reading the pieces from the file themselves when there is one.
    """

    def __init__(self, src: Source, arr: decode.EventArray, chunk_bytes: int, workers: int) -> None:
        self.src, self.arr, self.chunk_bytes, self.workers = src, arr, chunk_bytes, workers
        self.pool = None

    def __enter__(self) -> "_Pieces":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[tuple[int, int, object]]:
        cuts = decode.iter_event_cuts(self.src.raw, self.arr.start, self.arr.end, self.chunk_bytes)
        if self.workers <= 1:
            for offset, length in cuts:
                yield offset, length, _NOT_RUN
            return
        import multiprocessing
        from collections import deque
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        if fast.native.ENABLED:  # it releases the GIL while it parses: threads, no processes to start
            self.pool = ThreadPoolExecutor(self.workers)
        else:  # spawn, not fork: forking a process that runs polars thread pools can deadlock
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        ahead: deque = deque()
        for offset, length in cuts:
            with _bare_main():
                if self.src.file is not None:
                    fut = self.pool.submit(fast.decode_file_piece, str(self.src.file), offset, length)
                else:
                    fut = self.pool.submit(fast.decode_piece, _trim(self.src.read(offset, length)))
            ahead.append((offset, length, fut))
            if len(ahead) > self.workers + 1:
                offset, length, fut = ahead.popleft()
                yield offset, length, fut.result()
        while ahead:
            offset, length, fut = ahead.popleft()
            yield offset, length, fut.result()


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    """Workers are spawned (on submit) without re-running the main script: a spawned process
    imports ``__main__``'s file first (for the ``traceview`` script: the whole CLI, ~0.3 s
    per worker), and decoding needs only ``load.fast``."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _trim(piece: bytes) -> bytes:
    return piece.strip().rstrip(b",")


class _Table:
    """The event table as it grows: frames from the fast path, rows from the per-event path."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self.buf = decode.ColumnBuffer()
        self.fast_skipped: dict[str, int] = {}

    @property
    def rows(self) -> int:
        return sum(f.height for f in self.frames) + len(self.buf.cols["ts"])

    def add(self, src: Source, offset: int, length: int, result: object) -> bool:
        """Decode one piece (or take the worker's result); False if it is not whole events."""
        piece = None
        if result is _NOT_RUN and src.file is not None:  # read into one bracketed buffer: no copies
            result = fast.decode_file_piece(str(src.file), offset, length)  # (of a piece that may be 500 MB)
        elif result is _NOT_RUN:
            piece = src.read(offset, length)
            result = fast.decode_piece(_trim(piece))
        if result is not None:
            self._take(result)
            return True
        return decode.decode_chunk(self.buf, piece if piece is not None else src.read(offset, length))

    def add_bytes(self, piece: bytes) -> bool:
        result = fast.decode_piece(_trim(piece))
        if result is None:
            return decode.decode_chunk(self.buf, piece)
        self._take(result)
        return True

    def _take(self, result: fast.Piece) -> None:
        self._flush()
        self.frames.append(result.frame)
        for reason, n in result.skipped.items():
            self.fast_skipped[reason] = self.fast_skipped.get(reason, 0) + n

    def skipped(self) -> dict[str, int]:
        out = dict(self.buf.skipped)
        for reason, n in self.fast_skipped.items():
            out[reason] = out.get(reason, 0) + n
        return out

    def _flush(self) -> None:
        """Rows the per-event path added become a frame, so that file order is kept."""
        if self.buf.cols["ts"]:
            self.frames.append(_lists_frame(self.buf))

    def frame(self) -> pl.DataFrame:
        self._flush()
        frames = [f for f in self.frames if f.height] or [pl.DataFrame(schema=fast.SCHEMA)]
        df = pl.concat(frames, how="vertical", rechunk=False) if len(frames) > 1 else frames[0]
        self.frames = []
        gpu = pl.col("kind").is_in(GPU_KINDS)
        return df.with_columns(
            device=pl.when(gpu).then(pl.coalesce("device", "pid")).otherwise(pl.col("device")),
            stream=pl.when(gpu).then(pl.coalesce("stream", "tid")).otherwise(pl.col("stream")),
            end=pl.col("ts") + pl.col("dur"),
        )


def _as_int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _lists_frame(buf: decode.ColumnBuffer) -> pl.DataFrame:
    """The per-event path's column lists as a frame (the lists are emptied)."""
    c = buf.cols
    df = pl.DataFrame(
        {
            "kind": pl.Series(c["kind"], dtype=pl.Utf8).cast(KIND_DTYPE),
            "name": pl.Series(c["name"], dtype=pl.Utf8).cast(pl.Categorical),
            "pid": pl.Series(c["pid"], dtype=pl.Int64),
            "tid": pl.Series(c["tid"], dtype=pl.Int64),
            "ts": pl.Series(c["ts"], dtype=pl.Float64),
            "dur": pl.Series(c["dur"], dtype=pl.Float64),
            "correlation": pl.Series(c["correlation"], dtype=pl.Int64),
            "external_id": pl.Series(c["external_id"], dtype=pl.Int64),
            "device": pl.Series(c["device"], dtype=pl.Int64),
            "stream": pl.Series(c["stream"], dtype=pl.Int64),
            "input_dims": pl.Series(c["input_dims"], dtype=pl.Utf8),
            "bytes": pl.Series(c["bytes"], dtype=pl.Int64),
            "grid": pl.Series(c["grid"], dtype=pl.Utf8).cast(pl.Categorical),
            "annotation": pl.Series(c["annotation"], dtype=pl.Utf8),
        }
    )
    for col in c.values():
        col.clear()
    return df


class TraceFiles(list):
    """The trace files of a directory (a list of paths, sorted), and ``skipped``: the other
    files looked at, each with why it was not taken (``(path, reason)``)."""

    def __init__(self, files: list[Path], skipped: list[tuple[Path, str]]) -> None:
        super().__init__(files)
        self.skipped = skipped


def find_trace_files(directory: Path) -> TraceFiles:
    """Trace files directly inside ``directory`` (sorted), by suffix.

    A symlink that is dangling or loops is taken (its load says what is wrong with it,
    by name) rather than dropped; a JSON beside the ranks that is plainly not a trace (a
    list of records, a small object without ``traceEvents``: a manifest, a config) is
    skipped, with its reason in ``skipped``.  A directory with no trace at all is an error
    that lists what was looked at.
    """
    try:
        entries = sorted(directory.iterdir())
    except PermissionError:
        raise TraceError(directory, "permission denied (cannot list the directory)") from None
    files, skipped, looked = [], [], 0
    for p in entries:
        if p.is_dir():
            continue
        looked += 1
        if not p.name.endswith(TRACE_SUFFIXES):
            skipped.append((p, "not a trace file name (" + ", ".join("*" + x for x in TRACE_SUFFIXES) + ")"))
            continue
        if not p.is_file() and not p.is_symlink():  # a socket, a device: nothing to read
            skipped.append((p, "not a regular file"))
            continue
        why = sidecar_reason(p) if p.is_file() else None
        if why is not None:
            skipped.append((p, why))
            continue
        files.append(p)
    if not files:
        shown = "; ".join(f"{q.name}: {why}" for q, why in skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
        raise TraceError(directory, f"no trace files in this directory ({looked} files looked at"
                                    + (f": {shown})" if shown else ")"))
    return TraceFiles(files, skipped)


#: The compressed suffixes a directory scan takes besides plain JSON (read by content anyway).
TRACE_SUFFIXES = (".json", ".json.gz", ".json.zst", ".json.zstd", ".json.bz2", ".json.xz", ".json.lz4")

_SNIFF_BYTES = 64 << 10


SIDECAR_NOTE = " (a sidecar, not a trace)"  # how a scan says a file beside the ranks is no trace


def sidecar_reason(path: Path) -> str | None:
    """Why a JSON file beside the ranks is not a trace (a manifest, a config, a list of
    records), from its first 64 KiB; None when it may be one (the loader decides)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
            whole = len(head) < _SNIFF_BYTES
            if head[:2] == b"\x1f\x8b":
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                head = d.decompress(head, _SNIFF_BYTES)
                whole = whole and d.eof
            elif compression_of(head) is not None or wide_encoding(head[:4]) is not None:
                return None
    except (OSError, zlib.error):
        return None  # unreadable or damaged: the loader says what is wrong, by name
    text = head.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"{"):
        if whole and b"traceEvent" not in text:  # (every match of the events key holds it)
            return "JSON without 'traceEvents'" + SIDECAR_NOTE
        return None
    if text.startswith(b"["):
        first = text[1:].lstrip()
        if first.startswith(b"]"):
            return None  # an empty array: the loader says "no GPU events"
        if not first.startswith(b"{"):
            return "a JSON list of values, not of trace events" + SIDECAR_NOTE
        m = re.match(rb'\{\s*"(\w+)"', first)
        body = first[: first.find(b"}") + 1] if b"}" in first else first[:4096]
        if m is not None and b'"ph"' not in body and b'"ts"' not in body:
            return "a JSON list of records without 'ph'/'ts'" + SIDECAR_NOTE
    return None
