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


THREAD_HEAP_ALIGN = 64 * 1024 * 1024   # glibc's HEAP_MAX_SIZE on 64-bit: thread arenas start aligned


def rss_by_kind(pid):
    """Resident MB of ``pid`` by kind of mapping, from /proc/PID/smaps: {heap, thread_arenas, anon, file}.

    ``heap`` is the main arena ([heap]); ``thread_arenas`` the anonymous mappings aligned to 64 MiB
    (glibc's per-thread malloc heaps); ``anon`` every other anonymous mapping (Python's object
    arenas, large blocks, stacks); ``file`` file-backed mappings (libraries, SQLite's shared memory).
    Empty if the process is gone.
    """
    kinds = dict.fromkeys(("heap", "thread_arenas", "anon", "file"), 0)
    kind = None
    try:
        with open(f"/proc/{pid}/smaps") as handle:
            for line in handle:
                head = line.split()
                if "-" in head[0] and len(head) >= 5:           # a mapping's first line
                    name = head[5] if len(head) > 5 else ""
                    start = int(head[0].split("-")[0], 16)
                    kind = ("heap" if name == "[heap]" else "file" if name.startswith("/") else
                            "thread_arenas" if not name and start % THREAD_HEAP_ALIGN == 0 else
                            "anon" if not name or name.startswith("[stack") else None)
                elif head[0] == "Rss:" and kind:
                    kinds[kind] += int(head[1])
    except OSError:
        return {}
    return {k: round(v / 1024, 2) for k, v in kinds.items()}
