"""The JSON format's published contract (msg_nagios_bridge/formats/result.schema.json) matches the code:
what the bridge publishes validates, and the decoder refuses what the schema calls invalid."""
import json
import pathlib
from importlib import resources

import jsonschema
import pytest
from hypothesis import given, settings, strategies as st

from msg_nagios_bridge.formats import json as json_format
from msg_nagios_bridge.formats.decode import Refused, decode
from msg_nagios_bridge.model import CheckResult

NOW = 1704070800
SCHEMA = json.loads(resources.files("msg_nagios_bridge.formats").joinpath("result.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
CORPUS = pathlib.Path(__file__).parent.parent / "fixtures" / "hostile" / "cases.jsonl"
FIELDS = {"siteName": "SITE", "gatheredAt": "nagios.site.org", "role": "site", "voName": "ops"}

TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")   # Nagios's text is C strings
names = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=";"), min_size=1,
                max_size=40).map(str.strip).filter(lambda name: name and not name.endswith("\\"))   # refused: docs/formats.md


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@settings(max_examples=150, deadline=None)
@given(host=names, service=st.one_of(st.none(), names), state=st.integers(0, 3), output=st.text(TEXT, max_size=50),
       long_output=st.text(TEXT, max_size=50), timestamp=st.integers(946684800, NOW))
def test_what_the_bridge_publishes_validates_and_decodes_back(host, service, state, output, long_output, timestamp):
    state = min(state, 2) if service is None else state
    result = CheckResult(host=host, service=service, state=state, output=output.replace("\n", " ").replace("\r", " "),
                         long_output=long_output, timestamp=timestamp)
    document = json.loads(json_format.encode(result, FIELDS))
    VALIDATOR.validate(document)
    back = decode({}, json.dumps(document).encode(), now=NOW)
    assert (back.host, back.service, back.state, back.timestamp) == (host, service, state, timestamp)


def json_cases():
    for line in CORPUS.read_text().splitlines():
        case = json.loads(line)
        try:       # NaN and Infinity (or 1e999) are not JSON: the decoder refuses them (bad-json)
            document = json.loads(case.get("body", ""))
            json.dumps(document, allow_nan=False)
        except ValueError:
            continue
        if isinstance(document, dict) and len(case.get("body", "")) < 100_000:
            yield pytest.param(document, id=case["name"])


EXTRA = [
    {"host": "h", "service": "s", "status": 2, "epoch": NOW},
    {"host": "h", "service": "s", "status": True, "epoch": NOW},
    {"host": "h", "service": "s", "state": [1], "epoch": NOW},
    {"host": "h", "service": "s", "state": 1},
    {"host": "h", "service": "s", "state": 1, "epoch": {"t": 1}},
    {"host": "h", "service": None, "state": 0, "timestamp": "2024-01-01T00:00:00Z"},
    {"host": 5, "service": "s", "state": 1, "epoch": NOW},
    {"host": "h", "service": "s", "state": 1, "epoch": NOW, "attempt": 0},
    {"host": "h", "service": "s", "state": 1, "epoch": NOW, "attributes": []},
    {"host": "h", "service": "s", "state": 1, "epoch": NOW, "state_type": "hard"},
    {"host": "h", "service": "s", "state": 1, "epoch": NOW, "state_type": "WEAK"},
]


@pytest.mark.parametrize("document", list(json_cases()) + EXTRA)
def test_the_decoder_refuses_what_the_schema_calls_invalid(document):
    """And when the decoder refuses a schema-valid document, it is for what the schema
    cannot say: names, values, sizes and times (docs/formats.md lists them)."""
    valid = VALIDATOR.is_valid(document)
    try:
        decode({"content-type": "application/json"}, json.dumps(document).encode(), now=NOW)
        accepted, reason = True, None
    except Refused as exc:
        accepted, reason = False, exc.reason
    if not valid:
        assert not accepted, f"schema-invalid but accepted: {document}"
    elif not accepted:
        assert reason in {"bad-host-name", "bad-service-name", "bad-status", "bad-timestamp", "field-too-long",
                          "invalid-result", "json-too-deep", "json-too-complex", "nul-byte", "bad-unicode",
                          "template-field-missing"}, (reason, document)
