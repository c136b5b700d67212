"""End-to-end demo: a sandboxed Nagios 4 -> msg-nagios-bridge -> a local ActiveMQ -> a subscriber.

Everything runs from a temp dir on 127.0.0.1 and is stopped by PID at the end.
Usage: .venv/bin/python scripts/demo.py [--services 50] [--seconds 20] [--source ocsp_pipe|perfdata]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msg_nagios_bridge import config  # noqa: E402
from msg_nagios_bridge.formats import wlcg  # noqa: E402
from msg_nagios_bridge.nagios_wiring import main_config_lines, object_definitions  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402
from tests.sandbox.bridge import Bridge, bridge_config  # noqa: E402
from tests.sandbox.nagios import Nagios, active_service, host  # noqa: E402
from tests.sandbox.stomp_probe import StompProbe  # noqa: E402

TOPIC = "/topic/grid.probe.metricOutput.EGEE.site.DEMO_SITE"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--source", choices=("ocsp_pipe", "perfdata"), default="ocsp_pipe")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="msg-nagios-bridge-demo-"))
    print(f"demo: working in {work}")
    broker = ActiveMQ(work / "activemq")
    started = []
    try:
        broker.start()
        started.append(broker)
        print(f"demo: ActiveMQ up on 127.0.0.1:{broker.stomp_port} (pid {broker.pid})")
        probe = StompProbe(broker, TOPIC)
        probe.start()
        started.append(probe)
        bridge = Bridge(work / "bridge", bridge_config(
            work / "bridge", [broker.stomp_port], site="DEMO.SITE",
            ocsp=args.source == "ocsp_pipe", perfdata=args.source == "perfdata"))
        bridge.start(wait_for=work / "bridge" / "ocsp.fifo" if args.source == "ocsp_pipe" else None)
        started.append(bridge)
        print(f"demo: bridge running (pid {bridge.pid}), source {args.source}, config {bridge.config_path}")
        settings = config.load(str(bridge.config_path))
        extra = dict(line.split("=", 1) for line in main_config_lines(settings).splitlines())
        services = [active_service(f"host{i % 5}.demo", f"check-{i}", state=i % 3, output=f"demo result {i}",
                                   interval=2, max_check_attempts=1) for i in range(args.services)]
        nagios = Nagios(work / "nagios", hosts=[host(f"host{i}.demo") for i in range(5)], services=services,
                        extra_cfg=extra, objects=object_definitions(settings))
        nagios.start()
        started.append(nagios)
        print(f"demo: Nagios 4 running (pid {nagios.pid}) with {args.services} services checked every 2 s")
        print(f"demo: subscriber on {TOPIC}")
        for second in range(1, args.seconds + 1):
            time.sleep(1)
            counters = bridge.status().get("counters", {})
            print(f"  t={second:3d}s  received by subscriber: {len(probe.messages):6d}   "
                  f"bridge published (status.json, every 5 s): {counters.get('published', 0)}")
        if probe.messages:
            print("demo: last message received:")
            last = probe.messages[-1]
            print("  headers: " + ", ".join(f"{k}={last.headers[k]}" for k in
                                          ("site", "host", "metric", "status", "result_id")))
            for line in last.body.splitlines():
                print("  | " + line)
            record = wlcg.decode(last.body)
            print(f"demo: OK: {len(probe.messages)} results from Nagios reached the broker "
                  f"(last: {record['hostName']} {record['metricName']} {record['metricStatus']})")
            return 0
        print("demo: FAILED: no result reached the subscriber; bridge log:\n" + bridge.log_text()[-3000:])
        return 1
    finally:
        for thing in reversed(started):
            thing.close() if isinstance(thing, StompProbe) else thing.stop()
        if not started or started[0] is not broker:
            broker.stop()
        print("demo: everything stopped")


if __name__ == "__main__":
    sys.exit(main())
