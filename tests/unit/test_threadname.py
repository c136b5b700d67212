"""OS-level thread names (daemon/threadname.py): what top -H and /proc show."""
import threading

from msg_nagios_bridge.daemon.threadname import name_os_thread, named_thread_starter


def os_name(thread: threading.Thread) -> str:
    with open(f"/proc/self/task/{thread.native_id}/comm") as handle:
        return handle.read().rstrip("\n")


def test_a_thread_names_itself_cut_to_what_the_kernel_keeps():
    names = {}
    ready, done = threading.Event(), threading.Event()

    def run():
        name_os_thread("nagios-writer")
        names["short"] = os_name(threading.current_thread())
        name_os_thread("perfdata:service-perfdata")
        names["long"] = os_name(threading.current_thread())
        ready.set()
        done.wait(5)

    thread = threading.Thread(target=run)
    thread.start()
    assert ready.wait(5)
    try:
        assert names == {"short": "nagios-writer", "long": "perfdata:servic"}
        assert os_name(threading.main_thread()) != "perfdata:servic"     # only the caller's
    finally:
        done.set()
        thread.join(5)


def test_the_starter_runs_the_loop_in_a_named_daemon_thread():
    seen = {}
    looked, release = threading.Event(), threading.Event()

    def loop():
        seen["os"] = os_name(threading.current_thread())
        seen["python"] = threading.current_thread().name
        looked.set()
        release.wait(5)

    thread = named_thread_starter("subscriber-rx")(loop)
    try:
        assert thread.daemon and looked.wait(5)
        assert seen == {"os": "subscriber-rx", "python": "subscriber-rx"}
    finally:
        release.set()
        thread.join(5)
    assert not thread.is_alive()
