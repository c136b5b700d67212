"""What /proc says about a process: CPU seconds, RSS, its peak, fds, threads, and where its
resident memory lives (tests, the soak, the benchmarks). Every reader returns NaN (or {}) for a
process that is gone, so a sampler racing an exit needs no try."""
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
NAN = float("nan")


def cpu_seconds(pid, children=False):
    """utime + stime of ``pid`` (all its threads), in seconds; 0 if it is gone. With
    ``children``, plus the CPU of the children it has waited for."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def thread_cpu(pid):
    """{thread id: (its name, utime + stime in seconds)} of ``pid``'s threads; {} if it is gone.
    A JVM's threads carry their names (cut to 15 characters): which one is busy says where a
    broker spends its time when the process as a whole uses less than its cores."""
    threads = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as handle:
                text = handle.read()
        except OSError:
            continue                    # ended meanwhile
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        threads[tid] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return threads


def busiest_thread(before, after, seconds):
    """(% of a core, name) of the thread that used the most CPU between two thread_cpu
    samples ``seconds`` apart; (0.0, "") when none ran."""
    best = (0.0, "")
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]        # born in between: from 0
        if seconds > 0 and 100 * used / seconds > best[0]:
            best = (100 * used / seconds, name)
    return best


def status_fields(pid, *keys):
    """{key: the number} of the fields ``keys`` of /proc/PID/status (sizes are in kB); {} if
    the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in keys:
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def rss_mb(pid="self"):
    """Current resident memory (VmRSS) of ``pid`` in MB; NaN if it is gone."""
    return status_fields(pid, "VmRSS").get("VmRSS", NAN) / 1024


def peak_rss_mb(pid="self"):
    """Peak resident memory (VmHWM) of ``pid`` in MB; NaN if it is gone."""
    return status_fields(pid, "VmHWM").get("VmHWM", NAN) / 1024


def rss_fds_threads(pid):
    """(VmRSS MB, open fds, threads) of ``pid``; NaNs if it is gone."""
    fields = status_fields(pid, "VmRSS", "Threads")
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return NAN, NAN, NAN
    if len(fields) < 2:
        return NAN, NAN, NAN
    return fields["VmRSS"] / 1024, fds, fields["Threads"]


THREAD_HEAP_SIZE = 64 * 1024 * 1024    # glibc's HEAP_MAX_SIZE on 64-bit


def rss_by_kind(pid):
    """Resident MB of ``pid`` by kind of mapping, from /proc/PID/smaps: {heap, thread_arenas, anon, file}.

    ``heap`` is the main arena ([heap]); ``thread_arenas`` glibc's per-thread malloc heaps;
    ``anon`` every other anonymous mapping (Python's object arenas, large blocks, stacks); ``file``
    file-backed mappings (libraries, SQLite's shared memory). Empty if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/smaps") as handle:
            return smaps_rss_by_kind(handle.read())
    except OSError:
        return {}


def smaps_rss_by_kind(text):
    """rss_by_kind of the text of an smaps file.

    A thread heap is told by its shape, not by its alignment alone: glibc reserves 64 MiB aligned
    to 64 MiB with no access and opens it for reading and writing as the heap grows, so it is a
    read-write mapping on a 64 MiB boundary that either fills the 64 MiB or is followed by the
    rest of them, inaccessible. (Regression: alignment alone once counted two merged Python
    object arenas, 2 MiB that happened to start on such a boundary, as a thread arena.)
    """
    mappings = []                       # [start, end, permissions, name, resident kB]
    for line in text.splitlines():
        head = line.split()
        if not head:
            continue
        if "-" in head[0] and len(head) >= 5:           # a mapping's first line
            start, end = (int(address, 16) for address in head[0].split("-"))
            mappings.append([start, end, head[1], head[5] if len(head) > 5 else "", 0])
        elif head[0] == "Rss:" and mappings:
            mappings[-1][4] = int(head[1])
    kinds = dict.fromkeys(("heap", "thread_arenas", "anon", "file"), 0)
    for index, (start, end, permissions, name, resident) in enumerate(mappings):
        reserve = mappings[index + 1] if index + 1 < len(mappings) else None
        heap_end = start + THREAD_HEAP_SIZE
        thread_heap = (not name and permissions.startswith("rw") and start % THREAD_HEAP_SIZE == 0 and
                       (end == heap_end or reserve is not None and reserve[0] == end and
                        reserve[1] == heap_end and reserve[2].startswith("---") and not reserve[3]))
        kind = ("heap" if name == "[heap]" else "file" if name.startswith("/") else
                "thread_arenas" if thread_heap else
                "anon" if not name or name.startswith("[stack") else None)
        if kind:
            kinds[kind] += resident
    return {k: round(v / 1024, 2) for k, v in kinds.items()}
