"""The Bridge's own contracts: a reload hands over what must survive it; a stop is bounded."""
import json
import os
import threading
import time

from msg_nagios_bridge import config
from msg_nagios_bridge.daemon import service
from msg_nagios_bridge.model import CheckResult, Message, result_to_dict
from msg_nagios_bridge.inbound import judgement
from msg_nagios_bridge.spool import Spool
from tests.sandbox.nagios import pipe_bytes
from tests.sandbox.ports import wait_until

CONFIG = """
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"], backoff_initial: 0.2, backoff_max: 1}}
spool: {{directory: {tmp}/spool}}
sources: {{ocsp_pipe: {{enabled: false}}}}
inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders: ['*']}}]}},
          command_file: {tmp}/nagios.cmd, check_result_path: {tmp}}}
"""


def bridge_filling_the_fifo(tmp_path, count=1500):
    """A Bridge whose inbound spool holds ``count`` results, writing into a FIFO that a Nagios
    holds open without reading, returned once that FIFO is (nearly) full:
    (config path, the FIFO's read end, the results, the bridge)."""
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    os.mkfifo(tmp_path / "nagios.cmd")
    nagios = os.open(tmp_path / "nagios.cmd", os.O_RDONLY | os.O_NONBLOCK)
    results = [CheckResult(host="h", service=f"s{i}", state=0, output="x" * 100, timestamp=1) for i in range(count)]
    with Spool(str(tmp_path / "spool" / "inbound.sqlite")) as spool:
        spool.put([Message(f"m{i}", "nagios", {}, json.dumps(result_to_dict(r)).encode())
                   for i, r in enumerate(results)])
    bridge = service.Bridge(config.load(str(path)))
    bridge.start()
    assert wait_until(lambda: pipe_bytes(nagios) >= 40_000, timeout=20, interval=0.05), "the FIFO never filled"
    return path, nagios, results, bridge


def test_a_reload_and_a_restart_keep_the_memory_of_results_already_injected(tmp_path):
    """Without it a result redelivered just after a reload or a restart would be injected twice,
    and an old result replayed then would roll an object's state back."""
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    bridge = service.Bridge(config.load(str(path)))
    bridge.start()
    now = time.time()
    bridge.inbound_spool.put([], newest=[("h\ts", now, judgement.memory_tag("id:x:already-injected"))])
    started = time.monotonic()
    fresh = service._reload(bridge, str(path))
    try:
        assert fresh is not bridge
        assert fresh.subscriber.memory.recall(["h\ts", "h\tt"]) == {
            "h\ts": (now, [judgement.memory_tag("id:x:already-injected")])}
        assert time.monotonic() - started < service.STOP_BUDGET
    finally:
        fresh.stop()
    restarted = service.Bridge(config.load(str(path)))
    restarted.start()
    try:
        assert list(restarted.subscriber.memory.recall(["h\ts", "h\tt"])) == ["h\ts"]
    finally:
        restarted.stop()


def test_stop_returns_within_its_budget_while_nagios_does_not_read(tmp_path):
    """Regression (fault suite under load: SIGKILLed at stop): the stop waited for each part in
    turn, each for up to its own limit (the writer alone 25 s). Now every part is told at once
    and the stop returns at the budget; what the writer held is still in the spool."""
    _, hung_nagios, results, bridge = bridge_filling_the_fifo(tmp_path)         # never reads
    try:
        time.sleep(0.5)                                # the writer now waits for room in the FIFO
        started = time.monotonic()
        bridge.stop(budget=3)
        took = time.monotonic() - started
        assert bridge.writer.is_alive(), "the writer should still be waiting on the full FIFO"
        assert took < 3 + 3, took          # the budget, then status.json and the spool's close (fsyncs)
        with Spool(str(tmp_path / "spool" / "inbound.sqlite")) as reopened:
            kept = {json.loads(entry.message.body)["service"] for entry in reopened.take(len(results))}
        in_fifo = {line.split(";")[2] for line in os.read(hung_nagios, 1 << 20).decode().splitlines()}
        assert kept | in_fifo == {result.service for result in results}, (len(kept), len(in_fifo))
    finally:
        bridge.writer.join(15)
        os.close(hung_nagios)


def test_a_reload_waits_for_the_old_writer_so_two_never_write_at_once(tmp_path):
    """Review finding: with the stop budget, a reload could start a new writer beside an old
    one still blocked on the FIFO; both wrote the same results (500 of 1,500 twice)."""
    path, nagios, results, bridge = bridge_filling_the_fifo(tmp_path)
    read, done = [], threading.Event()

    def nagios_wakes_up_later():
        time.sleep(4)
        while not done.is_set():
            try:
                read.append(os.read(nagios, 65536))
            except BlockingIOError:
                time.sleep(0.01)

    fresh, reader = None, threading.Thread(target=nagios_wakes_up_later, daemon=True)
    try:
        reader.start()
        fresh = service._reload(bridge, str(path))
        assert not bridge.writer.is_alive(), "the old writer outlived the reload"
        deadline = time.monotonic() + 30
        while fresh.inbound_spool.stats().depth and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)                      # a line written twice would be read by now
    finally:
        done.set()
        reader.join(5)
        if fresh is not None:
            fresh.stop()
        os.close(nagios)
    services = [line.split(";")[2] for line in b"".join(read).decode().splitlines()]
    assert sorted(set(services)) == sorted(result.service for result in results)
    assert len(services) == len(set(services)), f"{len(services) - len(set(services))} written twice"


def test_a_reload_whose_valid_config_cannot_start_goes_back_to_the_running_one(tmp_path):
    """Regression (review): a config that validates but cannot start (here its spool directory
    lies under a regular file) stopped the running bridge and then raised out of run(): the
    daemon exited, and the service manager restarted it into the same failure."""
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    bridge = service.Bridge(config.load(str(path)))
    bridge.start()
    (tmp_path / "a-file").write_text("")
    path.write_text(CONFIG.format(tmp=tmp_path).replace(f"{tmp_path}/spool", f"{tmp_path}/a-file/spool"))
    config.load(str(path))                                  # valid: check-config passes
    fresh = service._reload(bridge, str(path))
    try:
        assert fresh.settings.spool.directory == f"{tmp_path}/spool"
        assert fresh.subscriber.is_alive() and fresh.writer.is_alive()
        assert any(text.startswith("reload failed") for _, text in fresh.health.snapshot()["errors"])
    finally:
        fresh.stop()


def test_a_spool_directory_other_users_can_write_to_is_refused(tmp_path):
    """Regression: a world-writable spool.directory (e.g. one under /tmp) was used as it was:
    another user who makes inbound.sqlite before the bridge decides what it injects into the
    core, past every inbound check. The bridge now refuses to start on it, and says why."""
    import pytest
    from msg_nagios_bridge.spool import SpoolError
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool").chmod(0o777)
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    bridge = service.Bridge(config.load(str(path)))
    try:
        with pytest.raises(SpoolError, match="can be written by other users"):
            bridge.start()
        assert not (tmp_path / "spool" / "inbound.sqlite").exists()
    finally:
        bridge.stop(budget=5)
    (tmp_path / "spool").chmod(0o700)
    bridge = service.Bridge(config.load(str(path)))
    bridge.start()
    bridge.stop(budget=5)


INBOUND_WITH_OBJECTS = """
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"], backoff_initial: 0.2, backoff_max: 1}}
spool: {{directory: {tmp}/spool}}
sources: {{ocsp_pipe: {{enabled: true, path: {tmp}/ocsp.fifo}}}}
routes: [{{name: results, destination: /topic/x}}]
inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}],
          policy: {{rules: [{{senders: ['*']}}], objects_cache: {tmp}/objects.cache}},
          command_file: {tmp}/nagios.cmd, check_result_path: {tmp}}}
"""


def _objects_cache(path, hosts, mtime):
    path.write_text("".join(f"define service {{\n\thost_name\t{h}\n\tservice_description\ts\n\t}}\n\n"
                            for h in hosts))
    os.utime(path, (mtime, mtime))


def test_the_outbound_side_starts_before_the_object_list_is_read_and_the_guard_is_loaded(tmp_path, monkeypatch):
    """Review of 6f47f55: reading objects.cache (5.6 s of CPU at 500,000 objects) had moved in
    front of the OCSP reader's start, while the FIFO holds about 3,000 results."""
    (tmp_path / "bridge.yaml").write_text(INBOUND_WITH_OBJECTS.format(tmp=tmp_path))
    _objects_cache(tmp_path / "objects.cache", ["a"], 1000)
    order = []
    core_class = type(service.core_for(config.load(str(tmp_path / "bridge.yaml"))))
    read = core_class.known_objects
    start_sources = service.Bridge._start_outbound_sources
    monkeypatch.setattr(core_class, "known_objects", lambda self: order.append("objects list") or read(self))
    monkeypatch.setattr(service.Bridge, "_start_outbound_sources",
                        lambda self: order.append("outbound") or start_sources(self))
    bridge = service.Bridge(config.load(str(tmp_path / "bridge.yaml")))
    bridge.start()
    try:
        assert order == ["outbound", "objects list"], order
        assert bridge.echo.known_objects is not None and ("a", "s") in bridge.echo.known_objects
    finally:
        bridge.stop()


def test_an_object_list_read_half_written_costs_the_guard_nothing(tmp_path):
    config_path = tmp_path / "bridge.yaml"
    config_path.write_text(INBOUND_WITH_OBJECTS.format(tmp=tmp_path))
    objects = tmp_path / "objects.cache"
    _objects_cache(objects, ["a", "b"], 1000)
    bridge = service.Bridge(config.load(str(config_path)))
    bridge.start()
    try:
        passive = [CheckResult(host=h, service="s", state=0, attributes={"check_type": "PASSIVE"}) for h in "ab"]
        bridge.echo.about_to_inject(passive)
        _objects_cache(objects, ["a"], 2000)          # Nagios restarting: rewritten in place
        bridge.refresh_known_objects()
        _objects_cache(objects, ["a", "b"], 3000)
        bridge.refresh_known_objects()
        assert bridge.echo(passive[0]) and bridge.echo(passive[1])
    finally:
        bridge.stop()
