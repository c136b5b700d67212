"""End-to-end demo: site Nagios 4 -> site bridge -> ActiveMQ -> central bridge -> central Nagios 4.

Everything runs from a temp dir on 127.0.0.1 and is stopped by PID at the end.
Usage: .venv/bin/python scripts/demo.py [--services 50] [--seconds 20] [--source ocsp_pipe|perfdata]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msg_nagios_bridge import config  # noqa: E402
from msg_nagios_bridge.cores.nagios.wiring import main_config_lines, object_definitions  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402
from tests.sandbox.bridge import Bridge, bridge_config, inbound_config  # noqa: E402
from tests.sandbox.nagios import Nagios, active_service, host, passive_service  # noqa: E402
from tests.sandbox.stomp_probe import StompProbe  # noqa: E402

TOPIC = "/topic/grid.probe.metricOutput.EGEE.site.DEMO_SITE"
HOSTS = [f"host{i}.demo-site.org" for i in range(5)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--source", choices=("ocsp_pipe", "perfdata"), default="ocsp_pipe")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="msg-nagios-bridge-demo-"))
    print(f"demo: working in {work}")
    started = []
    try:
        broker = ActiveMQ(work / "activemq")
        started.append(broker)
        broker.start()
        print(f"demo: ActiveMQ up on 127.0.0.1:{broker.stomp_port} (pid {broker.pid})")
        probe = StompProbe(broker, TOPIC)
        started.append(probe)
        probe.start()

        names = [f"check-{i}" for i in range(args.services)]
        central = Nagios(work / "central-nagios", hosts=[host(h) for h in HOSTS],
                         services=[passive_service(HOSTS[i % 5], n) for i, n in enumerate(names)])
        started.append(central)
        central.start()
        receiver = Bridge(work / "central-bridge", bridge_config(
            work / "central-bridge", [broker.stomp_port], ocsp=False,
            inbound=inbound_config(central, TOPIC, durable_name="central-demo")))
        started.append(receiver)
        receiver.start()
        print(f"demo: central Nagios (pid {central.pid}) with {args.services} passive services, "
              f"fed by the central bridge (pid {receiver.pid}) subscribed to {TOPIC}")

        sender = Bridge(work / "site-bridge", bridge_config(
            work / "site-bridge", [broker.stomp_port], site="DEMO.SITE",
            ocsp=args.source == "ocsp_pipe", perfdata=args.source == "perfdata"))
        started.append(sender)
        sender.start(wait_for=work / "site-bridge" / "ocsp.fifo" if args.source == "ocsp_pipe" else None)
        settings = config.load(str(sender.config_path))
        extra = dict(line.split("=", 1) for line in main_config_lines(settings).splitlines())
        site = Nagios(work / "site-nagios", hosts=[host(h) for h in HOSTS], extra_cfg=extra,
                      objects=object_definitions(settings),
                      services=[active_service(HOSTS[i % 5], n, state=i % 3, output=f"demo result {i}",
                                               interval=2, max_check_attempts=1) for i, n in enumerate(names)])
        started.append(site)
        site.start()
        print(f"demo: site Nagios (pid {site.pid}) checks {args.services} services every 2 s; "
              f"site bridge (pid {sender.pid}) publishes them ({args.source} source)")
        print()
        for second in range(1, args.seconds + 1):
            time.sleep(1)
            landed = sum(1 for (h, s), e in central.status().items()
                         if s in names and e.get("has_been_checked") == "1")
            print(f"  t={second:3d}s  published by site bridge: {sender.counter('published'):6d}   "
                  f"seen on the broker: {len(probe.messages):6d}   "
                  f"injected by central bridge: {receiver.counter('injected'):6d}   "
                  f"central services with a result: {landed}/{args.services}")
        status = central.status()
        print()
        for name in names[:3]:
            entry = status.get((HOSTS[names.index(name) % 5], name), {})
            print(f"demo: central Nagios shows {HOSTS[names.index(name) % 5]}/{name}: state "
                  f"{entry.get('current_state')} '{entry.get('plugin_output')}'")
        landed = sum(1 for (h, s), e in status.items() if s in names and e.get("has_been_checked") == "1")
        if landed == args.services:
            print(f"demo: OK: every one of the {args.services} site services reached the central Nagios")
            return 0
        print(f"demo: FAILED: only {landed} of {args.services} services reached the central Nagios")
        print("site bridge log:\n" + sender.log_text()[-2000:] + "\ncentral bridge log:\n" + receiver.log_text()[-2000:])
        return 1
    finally:
        for thing in reversed(started):
            thing.close() if isinstance(thing, StompProbe) else thing.stop()
        print("demo: everything stopped")


if __name__ == "__main__":
    sys.exit(main())
