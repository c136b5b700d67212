"""status.json: the typed snapshot, its JSON form, and reading files of other releases."""
import json
import os
import re

import pytest

from msg_nagios_bridge.daemon import status as status_file
from msg_nagios_bridge.daemon.status import SCHEMA, SpoolGauges, Status, StatusError

NOW = 1_700_000_000.0

# A status.json as the releases before the schema number wrote it (same keys, no "schema").
OLDER = {"time": NOW, "pid": 42, "states": {"publisher": "connected to b1:61613"},
         "since": {"publisher": NOW - 5}, "counters": {"published": 7}, "last": {"publish": NOW - 1},
         "errors": [[NOW - 3, "lost the broker"]],
         "spool": {"depth": 3, "bytes": 900, "oldest_age": None, "dead_letters": 1}}


def snapshot(**changes):
    fields = dict(time=NOW, pid=42, states={"nagios_writer": "writing"}, since={"nagios_writer": NOW - 9},
                  counters={"injected": 5, "refused.bad-status": 1}, last={"inject": NOW - 2},
                  errors=((NOW - 4, "nagios went away"),),
                  inbound_spool=SpoolGauges(depth=1, bytes=10, oldest_age=0.5, dead_letters=0))
    fields.update(changes)
    return Status(**fields)


def test_the_json_form_round_trips_and_keeps_the_documented_keys():
    status = snapshot()
    data = json.loads(json.dumps(status.to_json()))
    assert Status.from_json(data) == status
    assert set(data) == {"schema", "time", "pid", "states", "since", "counters", "last", "errors",
                         "inbound_spool"}
    assert data["schema"] == SCHEMA
    assert data["inbound_spool"] == {"depth": 1, "bytes": 10, "oldest_age": 0.5, "dead_letters": 0}
    assert "spool" not in data, "a direction that is off has no spool key"


def test_a_file_without_a_schema_number_is_read_and_unknown_keys_are_ignored():
    status = Status.from_json({**OLDER, "added_by_a_newer_release": {"x": 1}})
    assert status.spool == SpoolGauges(depth=3, bytes=900, oldest_age=None, dead_letters=1)
    assert status.inbound_spool is None and status.errors == ((NOW - 3, "lost the broker"),)
    bare = Status.from_json({"time": NOW, "pid": 1})       # maps an older writer lacked: empty
    assert bare.states == {} and bare.counters == {} and bare.spools() == {}


@pytest.mark.parametrize("change, reason", [
    ({"time": "yesterday"}, "time is 'yesterday', not a number"),
    ({"pid": None}, "pid is None, not an integer"),
    ({"counters": {"published": "many"}}, "counters.published is 'many', not an integer"),
    ({"states": {"publisher": 1}}, "states.publisher is 1, not a string"),
    ({"errors": ["oops"]}, "errors is not a list of [time, text]"),
    ({"spool": {"depth": 1}}, "spool.bytes is missing, not an integer"),
])
def test_what_is_not_a_status_is_refused_with_the_reason(change, reason):
    with pytest.raises(StatusError, match="^" + re.escape(reason)):
        Status.from_json({**OLDER, **change})


def test_a_newer_schema_that_cannot_be_read_says_so():
    with pytest.raises(StatusError, match="newer release: schema 9"):
        Status.from_json({**OLDER, "schema": 9, "time": "later"})
    assert Status.from_json({**OLDER, "schema": 9}).pid == 42      # readable: read


def test_read_and_write(tmp_path):
    path = str(tmp_path / "status.json")
    assert status_file.read(path) is None, "no file: no status, not an error"
    status_file.write(path, snapshot())
    assert status_file.read(path) == snapshot()
    assert os.path.getsize(path) % status_file.BLOCK == 0, "padded to whole blocks"
    assert os.listdir(tmp_path) == ["status.json"]
    (tmp_path / "status.json").write_text("[1, 2")
    with pytest.raises(StatusError, match="status.json is not JSON"):
        status_file.read(path)
    (tmp_path / "status.json").write_text('{"time": 1}')
    with pytest.raises(StatusError, match="is not a bridge status: pid is missing"):
        status_file.read(path)


def test_the_exporter_serves_the_last_snapshot_it_was_given(tmp_path):
    """The metrics threads render what the main loop last took: no spool is read from them."""
    import urllib.request
    from msg_nagios_bridge.config import MetricsSettings
    from msg_nagios_bridge.daemon.service import Exporter
    from tests.sandbox.ports import free_port
    port = free_port()
    exporter = Exporter(MetricsSettings(listen=f"127.0.0.1:{port}", textfile=str(tmp_path / "m.prom")),
                        snapshot())
    try:
        get = lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "msg_nagios_bridge_injected_total 5" in get()
        exporter.update(snapshot(counters={"injected": 6}))
        assert "msg_nagios_bridge_injected_total 6" in get()
        assert "msg_nagios_bridge_injected_total 6" in (tmp_path / "m.prom").read_text()
        exporter.update(None)                   # no snapshot this round: the last one stays
        assert "msg_nagios_bridge_injected_total 6" in get()
    finally:
        exporter.close()


def test_a_metrics_textfile_that_cannot_be_written_is_logged_once_a_minute_with_the_key(tmp_path, caplog):
    # It logged a warning at every status interval (2 s): 43,200 lines a day.
    import logging
    from msg_nagios_bridge.config import MetricsSettings
    from msg_nagios_bridge.daemon.service import Exporter
    exporter = Exporter(MetricsSettings(textfile=str(tmp_path / "gone" / "m.prom")), None)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            exporter.update(snapshot())
    warnings = [r.getMessage() for r in caplog.records if "metrics textfile" in r.getMessage()]
    assert len(warnings) == 1 and "(metrics.textfile): No such file or directory" in warnings[0], warnings
