"""Where a process's resident memory lives, from /proc/PID/smaps (the soak, the allocator tests)."""


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
