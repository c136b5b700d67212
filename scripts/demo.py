"""End-to-end demo: site core -> site bridge -> ActiveMQ -> central bridge -> central core.

The cores are Nagios 4 at both ends (the default), or Icinga 2 at both ends (--core icinga2:
the site bridge reads Icinga's event stream, the central bridge writes through Icinga's API).
Everything runs from a temp dir on 127.0.0.1 and is stopped by PID at the end; the exit code is
0 only when every site service's result reached the central core.
Usage: .venv/bin/python scripts/demo.py [--core nagios|icinga2] [--services 50] [--seconds 20]
                                        [--source ocsp_pipe|perfdata]   (--source: Nagios only)
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msg_nagios_bridge import config  # noqa: E402
from msg_nagios_bridge.cores.icinga2 import wiring as icinga2_wiring  # noqa: E402
from msg_nagios_bridge.cores.nagios.wiring import main_config_lines, object_definitions  # noqa: E402
from tests.sandbox import icinga2 as icinga2_sandbox  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402
from tests.sandbox.bridge import Bridge, bridge_config, inbound_config  # noqa: E402
from tests.sandbox.nagios import Nagios, active_service, host, passive_service  # noqa: E402
from tests.sandbox.stomp_probe import StompProbe  # noqa: E402

TOPIC = "/topic/grid.probe.metricOutput.EGEE.site.DEMO_SITE"
HOSTS = [f"host{i}.demo-site.org" for i in range(5)]
ICINGA2_USER, ICINGA2_PASSWORD = "msg-nagios-bridge", "demo-secret"


def host_of(index):
    return HOSTS[index % len(HOSTS)]


def start_nagios(args, work, broker, names, started):
    """Central Nagios and its bridge, site bridge and site Nagios, started; (the site bridge,
    the central bridge, {service: (state, output)} of the central services with a result)."""
    central = Nagios(work / "central-nagios", hosts=[host(h) for h in HOSTS],
                     services=[passive_service(host_of(i), n) for i, n in enumerate(names)])
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
                  services=[active_service(host_of(i), n, state=i % 3, output=f"demo result {i}",
                                           interval=2, max_check_attempts=1) for i, n in enumerate(names)])
    started.append(site)
    site.start()
    print(f"demo: site Nagios (pid {site.pid}) checks {args.services} services every 2 s; "
          f"site bridge (pid {sender.pid}) publishes them ({args.source} source)")

    def central_results():
        return {s: (e.get("current_state"), e.get("plugin_output"))
                for (h, s), e in central.status().items() if s in names and e.get("has_been_checked") == "1"}
    return sender, receiver, central_results


def icinga2_section(icinga, publish):
    return (f"core: icinga2\n"
            f"icinga2: {{host: 127.0.0.1, port: {icinga.api_port}, ca_file: {icinga.ca_file},"
            f" user: {ICINGA2_USER}, password: {ICINGA2_PASSWORD}, publish: {str(publish).lower()}}}\n")


def start_pair(started, icinga, bridge, part, state, problem):
    """Start an Icinga 2 and its bridge (noted in ``started`` for the stop), and wait until the
    bridge's ``part`` is in ``state``; RuntimeError with the bridge's log if not within 30 s."""
    started.append(icinga)
    icinga.start()
    started.append(bridge)
    bridge.start()
    if not bridge.wait_state(part, state, timeout=30):
        raise RuntimeError(f"{problem}:\n{bridge.log_text()[-3000:]}")


def icinga2_with_bridge(workdir, objects, bridge_dir, bridge_text):
    """An Icinga 2 sandbox (not started) whose ApiUser for the bridge has the permissions
    `core-config` gives the bridge configured by ``bridge_text(icinga)``; and that bridge."""
    icinga = icinga2_sandbox.Icinga2(workdir, objects=objects)
    icinga.write_config()                      # makes its test CA, which the bridge's config names
    bridge = Bridge(bridge_dir, bridge_text(icinga))
    settings = config.load(str(bridge.config_path))
    icinga.api_users[ICINGA2_USER] = {"password": ICINGA2_PASSWORD,
                                      "permissions": icinga2_wiring.permissions(settings)}
    return icinga, bridge


def start_icinga2(args, work, broker, names, started):
    """As start_nagios, with Icinga 2 at both ends."""
    icinga2_sandbox.check_installed()
    central, receiver = icinga2_with_bridge(
        work / "central-icinga2", [icinga2_sandbox.passive_service(host_of(i), n) for i, n in enumerate(names)],
        work / "central-bridge", lambda icinga: bridge_config(
            work / "central-bridge", [broker.stomp_port], ocsp=False, inbound=f"""
inbound:
  enabled: true
  subscriptions: [{{destination: "{TOPIC}", durable_name: central-demo}}]
  policy: {{rules: [{{senders: ['*'], hosts: ['*'], services: ['*'], host_checks: true}}]}}
  writer: api
""") + icinga2_section(icinga, publish=False))
    start_pair(started, central, receiver, "icinga2_writer", "waiting for results",
               "the central bridge's Icinga 2 writer did not come up")
    print(f"demo: central Icinga 2 (pid {central.pid}, API on 127.0.0.1:{central.api_port}) with "
          f"{args.services} passive services, fed through its API by the central bridge (pid {receiver.pid}) "
          f"subscribed to {TOPIC}")

    site, sender = icinga2_with_bridge(
        work / "site-icinga2",
        [icinga2_sandbox.active_service(host_of(i), n, state=i % 3, output=f"demo result {i}", interval=2)
         for i, n in enumerate(names)],
        work / "site-bridge", lambda icinga: bridge_config(
            work / "site-bridge", [broker.stomp_port], site="DEMO.SITE", ocsp=False) + icinga2_section(icinga, True))
    start_pair(started, site, sender, "icinga2_events", "connected",
               "the site bridge's event stream did not connect")
    print(f"demo: site Icinga 2 (pid {site.pid}, API on 127.0.0.1:{site.api_port}) checks {args.services} "
          f"services every 2 s; site bridge (pid {sender.pid}) publishes them from Icinga's event stream "
          f"(Icinga 2.13 hands events out every 5 s)")

    def central_results():
        reply = central.api("GET", "/v1/objects/services?attrs=name&attrs=last_check_result")
        if reply.status != 200:
            raise RuntimeError(f"GET /v1/objects/services: {reply.status} {reply.body}")
        results = {}
        for entry in reply.body["results"]:
            last = entry["attrs"]["last_check_result"]
            if entry["attrs"]["name"] in names and last:
                results[entry["attrs"]["name"]] = (last["state"], last["output"].split("\n")[0])
        return results
    return sender, receiver, central_results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", choices=("nagios", "icinga2"), default="nagios",
                        help="the monitoring core at both ends (default: nagios)")
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--source", choices=("ocsp_pipe", "perfdata"), default=None,
                        help="how the site bridge reads Nagios's results (default: ocsp_pipe)")
    args = parser.parse_args()
    if args.core == "icinga2" and args.source:
        parser.error("--source is for Nagios: with Icinga 2 the site bridge reads its event stream")
    args.source = args.source or "ocsp_pipe"
    core_name = {"nagios": "Nagios", "icinga2": "Icinga 2"}[args.core]
    names = [f"check-{i}" for i in range(args.services)]
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

        start = start_nagios if args.core == "nagios" else start_icinga2
        sender, receiver, central_results = start(args, work, broker, names, started)
        print()
        for second in range(1, args.seconds + 1):
            time.sleep(1)
            print(f"  t={second:3d}s  published by site bridge: {sender.counter('published'):6d}   "
                  f"seen on the broker: {len(probe.messages):6d}   "
                  f"injected by central bridge: {receiver.counter('injected'):6d}   "
                  f"central services with a result: {len(central_results())}/{args.services}")
        results = central_results()
        print()
        for index, name in enumerate(names[:3]):
            state, output = results.get(name, (None, None))
            print(f"demo: central {core_name} shows {host_of(index)}/{name}: state {state} '{output}'")
        if len(results) == args.services:
            print(f"demo: OK: every one of the {args.services} site services reached the central {core_name}")
            return 0
        print(f"demo: FAILED: only {len(results)} of {args.services} services reached the central {core_name}")
        print("site bridge log:\n" + sender.log_text()[-2000:] + "\ncentral bridge log:\n" + receiver.log_text()[-2000:])
        return 1
    finally:
        for thing in reversed(started):
            thing.close() if isinstance(thing, StompProbe) else thing.stop()
        print("demo: everything stopped")


if __name__ == "__main__":
    sys.exit(main())
