"""Measures what docs/icinga2-notes.md reports about Icinga 2's API and is too slow for a test:
the request rate over one kept-alive connection, body size limits, the idle timeout, event
latency, what a reload does to streams and requests, and what SIGKILL of the umbrella leaves.

    .venv/bin/python -m tests.integration.icinga2_probe [rate|bodies|idle|latency|replay|reload|kill ...]
"""
import http.client
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from tests.sandbox.icinga2 import Icinga2, _start_time, passive_service

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
                started = time.perf_counter()
                for i in range(count):
                    reply = conn.request("POST", SERVICE_PATH.format(i % 10),
                                         result(f"run {run} result {i}", performance_data=[f"n={i}"],
                                                check_source="probe"))
                    assert reply.status == 200, reply
                elapsed = time.perf_counter() - started
            per_second.append(count / elapsed)
            print(f"rate run {run + 1}: {count} requests in {elapsed:.2f}s = {count / elapsed:.0f}/s")
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


PROBES = {"rate": rate, "bodies": bodies, "idle": idle, "latency": latency, "replay": replay,
          "reload": reload, "kill": kill}


def main(names):
    for name in names or PROBES:
        with tempfile.TemporaryDirectory(prefix=f"icinga2-probe-{name}-") as workdir:
            PROBES[name](workdir)


if __name__ == "__main__":
    socket.setdefaulttimeout(120)
    main(sys.argv[1:])
