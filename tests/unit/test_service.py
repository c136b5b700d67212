"""The Bridge's own contracts: a reload hands over what must survive it; a stop is bounded."""
import time

from msg_nagios_bridge import config, service

CONFIG = """
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"], backoff_initial: 0.2, backoff_max: 1}}
spool: {{directory: {tmp}/spool}}
sources: {{ocsp_pipe: {{enabled: false}}}}
inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders: ['*']}}]}},
          command_file: {tmp}/nagios.cmd, check_result_path: {tmp}}}
"""


def test_a_reload_keeps_the_ids_of_results_already_injected(tmp_path):
    """Without them a result redelivered just after a reload would be injected twice."""
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    bridge = service.Bridge(config.load(str(path)))
    bridge.start()
    bridge.subscriber.recent.add("id:already-injected")
    started = time.monotonic()
    fresh = service._reload(bridge, str(path))
    try:
        assert fresh is not bridge and "id:already-injected" in fresh.subscriber.recent
        assert time.monotonic() - started < service.STOP_BUDGET
    finally:
        fresh.stop()
