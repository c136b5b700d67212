"""Checks what docs/icinga2-notes.md reports about Icinga 2's API beyond the tests: single
answers (api, certpath), and what is slow or a measurement: the request rate over one kept-alive
connection, body size limits, the idle timeout, event latency, replay, what a reload does to
streams and requests, and what SIGKILL of the umbrella leaves. Prints what it sees.

    .venv/bin/python -m tests.integration.icinga2_probe [api certpath rate bodies idle latency replay reload kill]
"""
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from tests.sandbox.icinga2 import Icinga2, _start_time, host, passive_service

SERVICE_PATH = "/v1/actions/process-check-result?service=h1%21s{}"
LEAST = {"bridge": {"password": "bridge-pw", "permissions": [
    "events/CheckResult", "actions/process-check-result", "objects/query/Host", "objects/query/Service"]}}


def core(workdir, services=1):
    return Icinga2(Path(workdir) / "icinga2", objects=[passive_service("h1", f"s{i}") for i in range(services)],
                   api_users=LEAST).start()


def result(output, **params):
    return {"type": "Service", "exit_status": 0, "plugin_output": output, **params}


def rate(workdir, runs=3, count=1000):
    """``count`` process-check-result requests over one kept-alive connection, ``runs`` times."""
    icinga = core(workdir, services=10)
    per_second = []
    try:
        for run in range(runs):
            with icinga.connect(auth=("bridge", "bridge-pw")) as conn:
                conn.request("GET", "/v1/objects/hosts?host=h1")   # the TLS handshake is not timed
                started, each = time.perf_counter(), []
                for i in range(count):
                    sent = time.perf_counter()
                    reply = conn.request("POST", SERVICE_PATH.format(i % 10),
                                         result(f"run {run} result {i}", performance_data=[f"n={i}"],
                                                check_source="probe"))
                    each.append(time.perf_counter() - sent)
                    assert reply.status == 200, reply
                elapsed = time.perf_counter() - started
            per_second.append(count / elapsed)
            print(f"rate run {run + 1}: {count} requests in {elapsed:.2f}s = {count / elapsed:.0f}/s; per request "
                  f"median {statistics.median(each) * 1000:.2f} ms, max {max(each) * 1000:.0f} ms")
        print(f"rate: median {statistics.median(per_second):.0f}/s, range "
              f"{min(per_second):.0f}-{max(per_second):.0f}/s (load average {os.getloadavg()[0]:.1f})")
        started = time.perf_counter()
        for i in range(100):
            assert icinga.process_check_result("h1", "s0", 0, f"new connection {i}").status == 200
        print(f"rate with a new TLS connection per request: {100 / (time.perf_counter() - started):.0f}/s")
    finally:
        icinga.stop()


def _chunked(icinga, auth, body):
    """Send ``body`` with Transfer-Encoding: chunked (http.client does so for an iterable)."""
    conn = icinga.connect(auth=auth, timeout=60)
    headers = dict(conn.headers, **{"Content-Type": "application/json"})
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    try:
        conn.conn.request("POST", SERVICE_PATH.format(0), body=chunks, headers=headers, encode_chunked=True)
        response = conn.conn.getresponse()
        return response.status, response.read()[:120].decode()
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, ""
    finally:
        conn.close()


def bodies(workdir):
    """1 MiB and 20 MiB bodies, with Content-Length and chunked, for a user with `*` (which
    includes config/modify: 512 MiB limit) and the least-permission user (1 MiB limit)."""
    icinga = core(workdir)
    try:
        for label, auth in (("root (*)", icinga.auth), ("bridge (4 permissions)", ("bridge", "bridge-pw"))):
            for size in (1024 * 1024 + 1, 20 * 1024 * 1024):
                body = json.dumps(result("o" * size)).encode()
                started = time.monotonic()
                with icinga.connect(auth=auth, timeout=60) as conn:
                    reply = conn.request("POST", SERVICE_PATH.format(0), body)
                stored = len(icinga.object_state("h1", "s0")["last_check_result"]["output"])
                print(f"bodies {label}: {len(body)} bytes with Content-Length -> {reply.status} "
                      f"in {time.monotonic() - started:.2f}s, output stored: {stored} characters")
                print(f"bodies {label}: {len(body)} bytes chunked -> {_chunked(icinga, auth, body)}")
    finally:
        icinga.stop()


def idle(workdir):
    """How long a kept-alive connection may stay idle."""
    icinga = core(workdir)
    try:
        for pause in (8, 16):
            with icinga.connect() as conn:
                conn.request("POST", SERVICE_PATH.format(0), result("before the pause"))
                time.sleep(pause)
                try:
                    outcome = conn.request("POST", SERVICE_PATH.format(0), result("after the pause")).status
                except (OSError, http.client.HTTPException) as e:
                    outcome = type(e).__name__
            print(f"idle {pause}s, then a request on the same connection -> {outcome}")
        print("idle log:", [line for line in icinga.log_text().splitlines() if "No messages" in line][-1:])
        stream = icinga.events()
        time.sleep(20)
        icinga.process_check_result("h1", "s0", 0, "after 20 s of silence")
        try:
            event = stream.wait_for(timeout=10)["check_result"]["output"]
        except TimeoutError:
            event = None
        print(f"idle: an event stream silent for 20 s then got {event!r}; ended: {stream.ended.is_set()}")
        stream.close()
    finally:
        icinga.stop()


def latency(workdir, count=40, spacing=0.25):
    """Time from the process-check-result reply to its event on /v1/events."""
    icinga = core(workdir)
    stream = icinga.events(auth=("bridge", "bridge-pw"))
    sent, arrived = {}, {}

    def watch():
        while True:
            try:
                event = stream.wait_for(timeout=15)
            except TimeoutError:
                return
            arrived[event["check_result"]["output"]] = time.monotonic()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with icinga.connect() as conn:
            for i in range(count):
                conn.request("POST", SERVICE_PATH.format(0), result(f"latency {i}"))
                sent[f"latency {i}"] = time.monotonic()
                time.sleep(spacing)
        watcher.join(20)
        delays = [arrived[key] - sent[key] for key in sent if key in arrived]
        print(f"latency: {len(delays)} of {count} events arrived; delay min {min(delays):.2f}s median "
              f"{statistics.median(delays):.2f}s max {max(delays):.2f}s")
    finally:
        stream.close()
        icinga.stop()


def replay(workdir):
    """Is a result submitted while no stream is open delivered to a stream opened later?"""
    icinga = core(workdir)
    try:
        icinga.process_check_result("h1", "s0", 0, "nobody listening")
        stream = icinga.events(queue_name="late-listener")
        icinga.process_check_result("h1", "s0", 0, "listened to")
        time.sleep(7)
        stream.close()
        print("replay: outputs seen by the late stream:", [e["check_result"]["output"] for e in stream.events])
    finally:
        icinga.stop()


def reload(workdir, rounds=3):
    """What SIGHUP does to an event stream, to a kept-alive connection, to requests in flight."""
    icinga = core(workdir)
    try:
        for round_ in range(rounds):
            stream = icinga.events()
            conn = icinga.connect()
            conn.request("POST", SERVICE_PATH.format(0), result(f"just before reload {round_}"))
            started = time.monotonic()
            icinga.reload()
            took = time.monotonic() - started
            stream.ended.wait(5)
            try:
                after = conn.request("POST", SERVICE_PATH.format(0), result("after")).status
            except (OSError, http.client.HTTPException) as e:
                after = type(e).__name__
            conn.close()
            print(f"reload {round_ + 1}: took {took:.2f}s; stream ended: {stream.ended.is_set()}, events it "
                  f"delivered: {[e['check_result']['output'] for e in stream.events]}; kept-alive "
                  f"connection afterwards: {after}")
            stream.close()

        outcomes, stop = [], threading.Event()

        def hammer():
            conn = icinga.connect()
            while not stop.is_set():
                output = f"hammer {len(outcomes)}"
                try:
                    outcomes.append((output, conn.request("POST", SERVICE_PATH.format(0), result(output)).status))
                except (OSError, http.client.HTTPException) as e:
                    outcomes.append((output, type(e).__name__))
                    conn.close()
                    conn = icinga.connect()
            conn.close()

        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.5)
        icinga.reload()
        time.sleep(0.5)
        stop.set()
        thread.join()
        print(f"reload under load: {dict(Counter(status for _, status in outcomes))}")
        # a request that got no answer may or may not have been processed: the client cannot know
        print(f"  without an answer: {[output for output, status in outcomes if status != 200]}")
    finally:
        icinga.stop()


def kill(workdir):
    """What SIGKILL of the umbrella alone leaves running; and SIGTERM to the worker alone."""
    icinga = core(workdir)
    try:
        icinga.process_check_result("h1", "s0", 1, "accepted before the crash")
        workers = icinga.children()
        os.kill(icinga.pid, signal.SIGKILL)
        icinga.proc.wait()
        time.sleep(2)
        alive = [pid for pid in workers if _start_time(pid)]
        answers = icinga.api_answers()
        print(f"kill: SIGKILL to the umbrella; 2 s later its children {workers} alive: {alive}, API answers: {answers}")
    finally:
        icinga.stop()
        print(f"kill: stop() then SIGKILLed by PID: {icinga.killed}; alive now: {icinga.alive_processes()}")
    icinga.start()
    try:
        last = icinga.object_state("h1", "s0")["last_check_result"]
        print(f"kill: after the crash and a new start, the result accepted before it: {last and last['output']!r}")
    finally:
        icinga.stop()
    icinga = core(Path(workdir) / "again")
    try:
        worker = icinga.children()[0]
        os.kill(worker, signal.SIGTERM)
        time.sleep(10)
        print(f"kill: SIGTERM from us to the worker {worker}; 10 s later the umbrella has "
              f"{'exited with %s' % icinga.proc.poll() if icinga.proc.poll() is not None else 'not exited'}, "
              f"alive: {icinga.alive_processes()}, API answers: {icinga.api_answers()}")
    finally:
        icinga.stop()


def api(workdir):
    """Answers of process-check-result and /v1/events to single requests (the rows of
    docs/icinga2-notes.md that a test does not cover)."""
    dependency = """
object Dependency "h3-needs-parent" {
  parent_host_name = "parent"
  child_host_name = "h3"
  child_service_name = "s"
  disable_checks = true
}
"""
    icinga = Icinga2(Path(workdir) / "icinga2", extra_config=dependency, objects=[
        passive_service("h1", "s0"), passive_service("h1", "s1"), host("h2"), host("parent"),
        passive_service("h3", "s"), passive_service("h1", "no-passive", enable_passive_checks=False)]).start()
    try:
        reply = icinga.api("POST", "/v1/events", {"types": ["CheckResult"]})
        print(f"api: /v1/events without queue -> {reply.status} {reply.body}")
        for status in (0, 1, 2, 3, 4, 255, -1, "2", 1.0):
            reply = icinga.process_check_result("h1", "s0", status, f"exit_status {status!r}")
            last = icinga.object_state("h1", "s0")["last_check_result"]
            print(f"api: service exit_status {status!r} -> {reply.status}, state {last['state']}, "
                  f"last_check_result.exit_status {last['exit_status']}")
        for status in (0, 1, 2, 3):
            reply = icinga.process_check_result("h2", None, status, f"host exit_status {status}")
            print(f"api: host exit_status {status} -> {reply.status} {reply.body['results'][0]['status']!r}, "
                  f"host state {icinga.object_state('h2')['state']}")
        for body in ({"type": "Service", "plugin_output": "x"}, {"type": "Service", "exit_status": 0},
                     {"exit_status": 0, "plugin_output": "no type"}):
            reply = icinga.api("POST", SERVICE_PATH.format(0), body)
            print(f"api: body {body} -> {reply.status} {reply.body}")
        reply = icinga.api("POST", "/v1/actions/process-check-result", result("x", type="Service", service="h1!nope"))
        print(f"api: unknown object named in the body -> {reply.status} {reply.body}")
        reply = icinga.api("POST", "/v1/actions/process-check-result",
                           result("by filter", filter='service.name == "s1" || service.name == "s"'))
        print(f"api: a filter matching two objects -> {reply.status} {reply.body}")
        print(f"api: passive checks disabled -> {icinga.process_check_result('h1', 'no-passive', 0, 'x').body}")
        icinga.process_check_result("parent", None, 1, "parent down")
        print(f"api: child of a down parent -> {icinga.process_check_result('h3', 's', 2, 'x').body}; "
              f"recorded: {icinga.object_state('h3', 's')['last_check_result']}")
        before = time.time()
        icinga.process_check_result("h1", "s1", 0, "ttl", ttl=30)
        print(f"api: ttl 30 -> next_check {icinga.object_state('h1', 's1')['next_check'] - before:.1f}s ahead")
        icinga.process_check_result("h1", "s1", 0, "sources", check_source="mine", scheduling_source="mine too",
                                    check_command="my-command")
        last = icinga.object_state("h1", "s1")["last_check_result"]
        print(f"api: check_source/scheduling_source/check_command sent -> {last['check_source']!r}, "
              f"{last['scheduling_source']!r}, command {last['command']!r}")
        with icinga.connect() as conn:
            del conn.headers["Accept"]
            reply = conn.request("POST", SERVICE_PATH.format(0), result("no Accept header"))
        print(f"api: no Accept header -> {reply.status} {reply.body!r} Connection: {reply.headers.get('Connection')}")
    finally:
        icinga.stop()


def certpath(workdir):
    """The deprecated cert_path/key_path/ca_path of ApiListener instead of DataDir/certs."""
    icinga = Icinga2(Path(workdir) / "icinga2", objects=[passive_service("h1", "s0")])
    icinga.write_config()
    shutil.rmtree(icinga.data_dir / "certs")
    pki = icinga.dir / "pki"
    icinga.conf_file.write_text(icinga.conf_file.read_text().replace(
        "  accept_config = false\n",
        f'  accept_config = false\n  cert_path = "{pki}/api.pem"\n  key_path = "{pki}/api.key"\n'
        f'  ca_path = "{pki}/ca.pem"\n'))
    icinga.write_config = lambda: None   # keep this config
    check = subprocess.run(icinga.command("-C"), capture_output=True, text=True)
    print(f"certpath: -C exit {check.returncode}; warnings:",
          [line.split(": ", 1)[1] for line in check.stdout.splitlines() if "warning/" in line])
    icinga.start()
    try:
        print(f"certpath: API answers: {icinga.api_answers()}, DataDir/certs now holds "
              f"{sorted(p.name for p in (icinga.data_dir / 'certs').iterdir())}")
    finally:
        icinga.stop()


PROBES = {"api": api, "certpath": certpath, "rate": rate, "bodies": bodies, "idle": idle, "latency": latency,
          "replay": replay, "reload": reload, "kill": kill}


def main(names):
    for name in names or PROBES:
        with tempfile.TemporaryDirectory(prefix=f"icinga2-probe-{name}-") as workdir:
            PROBES[name](workdir)


if __name__ == "__main__":
    socket.setdefaulttimeout(120)
    main(sys.argv[1:])
