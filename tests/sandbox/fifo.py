"""Writing lines into a FIFO as Nagios's writers do: whole lines, at most PIPE_BUF bytes per
write(), so that every write is atomic beside other writers (the OCSP shells, Nagios's command
file clients). For a sandbox bridge's OCSP FIFO, frame the lines first (bridge.ocsp_records)."""
import errno
import os
import shlex
import select
import time

PIPE_BUF = select.PIPE_BUF      # 4096 on Linux


def pack(lines, limit=PIPE_BUF):
    """``lines`` (bytes, each ending in a newline) joined into chunks of at most ``limit``
    bytes, never splitting a line (a longer line is a chunk of its own)."""
    chunks, chunk = [], b""
    for line in lines:
        if chunk and len(chunk) + len(line) > limit:
            chunks.append(chunk)
            chunk = b""
        chunk += line
    if chunk:
        chunks.append(chunk)
    return chunks


def write_lines(path, lines):
    """Open ``path`` for writing (waiting, as the writers do, until a reader has it open) and
    write ``lines`` in packed chunks, one write() each."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for chunk in pack(lines):
            os.write(fd, chunk)
    finally:
        os.close(fd)


def write_lines_retrying(path, lines, timeout=60.0):
    """As write_lines, but with a non-blocking open and writes retried until ``timeout``: the
    reader goes away while a bridge reloads (ENXIO, EPIPE), and a full pipe is waited on.
    Returns how many times it had to open the FIFO again."""
    chunks = pack(lines)
    deadline = time.monotonic() + timeout
    fd, retries = None, 0
    try:
        while chunks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not write into {path} within {timeout} s")
            if fd is None:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno not in (errno.ENXIO, errno.ENOENT):
                        raise
                    retries += 1
                    time.sleep(0.05)
                    continue
            try:
                os.write(fd, chunks[0])          # <= PIPE_BUF: all of it or EAGAIN
                chunks.pop(0)
            except BlockingIOError:
                select.select([], [fd], [], 0.5)
            except BrokenPipeError:              # the reader closed: reopen, write this chunk again
                os.close(fd)
                fd = None
                retries += 1
    finally:
        if fd is not None:
            os.close(fd)
    return retries


def printf_command(tag: str, macros, fifo: str) -> str:
    """A shell command writing one bare result line into ``fifo`` (one sh fork per check):
    the format before ocsp_command, kept for tests and benchmarks that log results to a file.

    ``>>``, not ``>``: while the FIFO is missing the shell creates a regular file, which the
    bridge takes in at its next start; ``>`` would truncate it at every check, keeping one line.
    """
    fmt = "\\t".join(["%s"] * (1 + len(macros))) + "\\n"
    args = " ".join(f"'{value}'" for value in (tag,) + tuple(macros))
    return f"printf '{fmt}' {args} >> {shlex.quote(fifo)}"
