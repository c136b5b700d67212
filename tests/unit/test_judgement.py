"""The inbound judgement: one function for subscriber, requeue and try-message; linear time on
hostile input; freshness, duplicates by identity, no rollback; the poison guard."""
import json
import multiprocessing
import os
import time

import pytest
from hypothesis import given, settings, strategies as st

from msg_nagios_bridge import spool as spool_module
from msg_nagios_bridge.inbound import judgement
from msg_nagios_bridge.formats.decode import Mapping
from msg_nagios_bridge.inbound.policy import Policy, Rule
from msg_nagios_bridge.inbound.poison import PoisonGuard, fingerprint
from msg_nagios_bridge.spool import Spool

MiB = 1 << 20
NOW = 1704070800.0
ALLOW_ALL = Policy(rules=(Rule(senders=("*",), hosts=("*",), services=("*",), host_checks=True),))
RULES = judgement.Rules(mapping=Mapping(), policy=ALLOW_ALL)
SENDER = {"nagios_host": "nagios.site-a.org"}


def wlcg(host="se01.example.org", service="org.sam.SRM-Put", when="2024-01-01T00:00:00Z", status="OK",
         summaryData="fine", **extra):
    lines = [f"hostName: {host}", f"metricName: {service}", f"metricStatus: {status}", f"timestamp: {when}",
             f"summaryData: {summaryData}"] + [f"{k}: {v}" for k, v in extra.items()]
    return ("\n".join(lines) + "\nEOT\n").encode()


def one(headers, body, rules=RULES, memory=None, now=NOW):
    return judgement.judge_batch(rules, [(headers, body)], memory or judgement.NoMemory(), now)[0]


# -- linear time: no message can stall the bridge --------------------------------------------

def _json_key_flood(size):
    return b"{" + b",".join(b'"k%d":1' % i for i in range(size // 10)) + b"}"


# Each family builds a body (and headers) of about ``size`` bytes, shaped to make a parser slow.
FAMILIES = {
    "json unterminated string of escaped quotes": lambda n: ({}, b'{"host": "' + b'\\"' * (n // 2)),
    "json unterminated string of backslashes": lambda n: ({}, b'{"host": "' + b"\\\\" * (n // 2)),
    "json many empty strings": lambda n: ({}, b'{"a": [' + b'"",' * (n // 3) + b'""]}'),
    "json nesting far above the limit": lambda n: ({}, b"[" * (n // 2) + b"]" * (n // 2)),
    "json objects nesting far above the limit": lambda n: ({}, b'{"a":' * (n // 5) + b"1" + b"}" * (n // 5)),
    "json nesting just above the limit, wide": lambda n: ({}, b"[" + b",".join([b"[[[[[[[1]]]]]]]"] * (n // 16)) + b"]"),
    "json nesting at the limit, wide": lambda n: ({}, b'{"host":"h","service":"s","state":0,"epoch":1704070000,'
                                                  b'"x":[' + b",".join([b"[[[[1]]]]"] * (n // 10)) + b"]}"),
    "json many keys": lambda n: ({}, _json_key_flood(n)),
    "json huge number": lambda n: ({}, b'{"host":"h","service":"s","state":' + b"1" * n + b"}"),
    "json huge exponent": lambda n: ({}, b'{"host":"h","service":"s","state":0,"epoch":1e' + b"9" * n + b"}"),
    "wlcg many tiny lines": lambda n: ({}, b"".join(b"%x:b\n" % i for i in range(n // 8)) + b"EOT\n"),  # keys differ
    "wlcg many blank lines": lambda n: ({}, b"\n" * n + b"EOT\n"),
    "wlcg one huge line": lambda n: ({}, b"x" * n),
    "wlcg colons": lambda n: ({}, b"x:" * (n // 2) + b"\nEOT\n"),
    "wlcg EOT lines": lambda n: ({}, b"EOT\n" * (n // 4)),
    "wlcg detailsData of EOT lines": lambda n: ({}, wlcg()[:-4] + b"detailsData: " + b"EOT\n" * (n // 4) + b"EOT\n"),
    "wlcg CR games": lambda n: ({}, wlcg(summaryData="\r\n\r" * (n // 3))),
    "wlcg perfdata of many items": lambda n: ({}, wlcg(performanceData="a=1 " * (n // 4))),
    "wlcg huge uri": lambda n: ({}, wlcg(serviceURI="a://" * (n // 4))),
    "wlcg huge timestamp": lambda n: ({}, wlcg(when="1" * n)),
    "wlcg huge names": lambda n: ({}, wlcg(host="h" * (n // 2), service="s" * (n // 2))),
    # A body valid up to its last bytes: read to the end before the bad encoding shows.
    "mixed encodings": lambda n: ({}, wlcg(detailsData="é" * (n // 2))[:-4] + "é".encode("latin-1") + b"\nEOT\n"),
    "overlong utf-8": lambda n: ({}, wlcg(detailsData="d" * n)[:-4] + b"\xc0\xaf\nEOT\n"),
    "thousands of headers": lambda n: ({f"h{i}": "v" for i in range(n // 100)}, wlcg()),
    "one long header name": lambda n: ({"x" * n: "v"}, wlcg()),
    "one long header value": lambda n: ({"role": "r" * n}, wlcg()),
    "long headers just within limits": lambda n: (
        {f"h{i:03d}": "v" * (judgement.MAX_HEADERS_BYTES // judgement.MAX_HEADERS - 8)
         for i in range(judgement.MAX_HEADERS - 1)}, wlcg(detailsData="d" * n)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_hostile_shape_of_a_mebibyte_is_judged_within_a_second(family):
    """Regression: an unterminated JSON string full of escaped quotes made the decoder's
    nesting pre-check quadratic (20 KB 1.5 s; 1 MiB about an hour, holding the GIL)."""
    extra, body = FAMILIES[family](MiB)
    headers = dict(SENDER, **extra)
    rules = judgement.Rules(mapping=Mapping(max_body_bytes=2 * MiB), policy=ALLOW_ALL)
    started = time.perf_counter()
    verdict = one(headers, body, rules)
    took = time.perf_counter() - started
    assert took < 1.0, f"{family}: {took:.2f} s ({verdict.outcome}, {verdict.refusal})"
    assert verdict.outcome in (judgement.ACCEPTED, judgement.REFUSED)


@st.composite
def hostile_shapes(draw):
    """Repeated hostile units, at sizes up to 256 KiB (keeps the run short; the fixed families
    above take each shape to a mebibyte)."""
    unit = draw(st.sampled_from([b'\\"', b"\\\\", b'"', b"[", b"{", b'{"a":', b"]", b"}", b",", b":",
                                 b"\n", b"\r", b"\r\n", b"EOT\n", b"a: b\n", b"detailsData: ", b"\xc3",
                                 b"\xe2\x80\xae", b"\x00", b" ", b"1", b"e9"]))
    prefix = draw(st.sampled_from([b"", b'{"host": "', b'{"host":"h","service":"s","state":0,"x":',
                                   wlcg()[:-4], b"["]))
    count = draw(st.integers(min_value=1, max_value=(256 << 10) // len(unit)))
    suffix = draw(st.sampled_from([b"", b"\nEOT\n", b'"}', b"]", b"}"]))
    return prefix + unit * count + suffix


@settings(max_examples=60, deadline=None)
@given(body=hostile_shapes())
def test_generated_hostile_shapes_are_judged_fast(body):
    started = time.perf_counter()
    verdict = one(SENDER, body)
    assert time.perf_counter() - started < 1.0
    assert verdict.outcome in (judgement.ACCEPTED, judgement.REFUSED)


def test_the_sender_is_judged_before_the_body_is_decoded():
    """A sender no rule allows costs no decoding, and its refusal says so whatever the body
    (its messages are then left out of the loss accounting: inbound/sequence.py)."""
    only_a = judgement.Rules(mapping=Mapping(), policy=Policy(rules=(
        Rule(senders=("nagios.site-a.org",), hosts=("*",), services=("*",)),)))
    stranger = {"nagios_host": "nagios.elsewhere.org"}
    for body in (b"not a record", wlcg()):
        assert one(stranger, body, only_a).refusal.reason == "sender-not-allowed"
        assert one({}, body, only_a).refusal.reason == "no-sender"
    assert one(SENDER, b"not a record", only_a).refusal.reason == "no-eot"


def test_a_message_within_every_limit_is_still_accepted():
    verdict = one(dict(SENDER, result_id="r1"), wlcg())
    assert verdict.outcome == judgement.ACCEPTED, verdict.refusal
    assert verdict.result.host == "se01.example.org" and verdict.sender == "nagios.site-a.org"


@pytest.mark.parametrize("headers, reason", [
    ({f"h{i}": "v" for i in range(judgement.MAX_HEADERS + 1)}, "bad-headers"),
    ({"x" * (judgement.MAX_HEADER_NAME_BYTES + 1): "v"}, "bad-headers"),
    ({"role": "r" * (judgement.MAX_HEADER_VALUE_BYTES + 1)}, "bad-headers"),
    ({"result_id": "r" * (judgement.MAX_RESULT_ID + 1)}, "bad-headers"),
    # Within the limit in characters, beyond it in UTF-8 bytes (2 a character).
    ({"role": "\u00e9" * (judgement.MAX_HEADER_VALUE_BYTES // 2 + 1)}, "bad-headers"),
    ({"\u00e9" * (judgement.MAX_HEADER_NAME_BYTES // 2 + 1): "v"}, "bad-headers"),
    # Each header within its limit, all of them beyond the total.
    ({f"h{i}": "v" * judgement.MAX_HEADER_VALUE_BYTES for i in range(judgement.MAX_HEADERS_BYTES
                                                                      // judgement.MAX_HEADER_VALUE_BYTES)},
     "bad-headers"),
])
def test_headers_beyond_the_limits_are_refused(headers, reason):
    verdict = one(dict(SENDER, **headers), wlcg())
    assert verdict.outcome == judgement.REFUSED and verdict.refusal.reason == reason


def test_headers_at_the_limits_are_accepted_ascii_or_not():
    at_limits = {"x" * judgement.MAX_HEADER_NAME_BYTES: "v", "note": "r" * judgement.MAX_HEADER_VALUE_BYTES,
                 "result_id": "r" * judgement.MAX_RESULT_ID}
    assert one(dict(SENDER, **at_limits), wlcg()).outcome == judgement.ACCEPTED
    wide = {"\u00e9" * (judgement.MAX_HEADER_NAME_BYTES // 2): "\u00e9" * (judgement.MAX_HEADER_VALUE_BYTES // 2)}
    assert one(dict(SENDER, **wide), wlcg()).outcome == judgement.ACCEPTED


def test_a_header_that_is_not_text_is_refused():
    verdict = one(dict(SENDER, role=b"bytes"), wlcg())
    assert verdict.outcome == judgement.REFUSED and verdict.refusal.reason == "bad-headers"


# -- freshness, duplicates, no rollback --------------------------------------------------------

def test_too_old_and_from_the_future_are_refused():
    rules = judgement.Rules(mapping=Mapping(), policy=ALLOW_ALL, max_age=3600, max_clock_skew=300)
    old = one(SENDER, wlcg(when="2023-12-31T23:59:00Z"), rules, now=NOW)         # 61 min before NOW
    assert old.outcome == judgement.REFUSED and old.refusal.reason == "too-old"
    ahead = one(SENDER, wlcg(when="2024-01-01T01:06:00Z"), rules, now=NOW)      # 6 min after NOW
    assert ahead.outcome == judgement.REFUSED and ahead.refusal.reason == "from-future"
    fine = one(SENDER, wlcg(when="2024-01-01T01:04:00Z"), rules, now=NOW)
    assert fine.outcome == judgement.ACCEPTED


def test_a_verdict_keeps_the_frozen_dataclass_contract_with_its_own_init():
    """Verdict's own __init__ (faster than the dataclass's) keeps its contract: frozen, equal by
    fields, replace() keeps the key and tag made once, and they are made when not given."""
    import dataclasses
    from msg_nagios_bridge.model import CheckResult, Refused
    result = CheckResult("h.example.org", "svc", 0, timestamp=1700000000.0)
    verdict = judgement.Verdict(judgement.ACCEPTED, "id:abc:1", result, "sender")
    assert verdict.object_key == "h.example.org\tsvc" == judgement.object_key(result)
    assert verdict.tag == judgement.memory_tag("id:abc:1") and len(verdict.tag) == judgement.NEWEST_TAG_WIDTH
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.outcome = judgement.STALE
    stale = dataclasses.replace(verdict, outcome=judgement.STALE)
    assert (stale.outcome, stale.key, stale.result, stale.sender, stale.object_key, stale.tag) == (
        judgement.STALE, verdict.key, result, "sender", verdict.object_key, verdict.tag)
    assert verdict == judgement.Verdict(outcome=judgement.ACCEPTED, key="id:abc:1", result=result, sender="sender")
    assert verdict != stale
    given = judgement.Verdict(judgement.ACCEPTED, "k", result, object_key="given", tag="t")
    assert (given.object_key, given.tag) == ("given", "t")
    refused = judgement.Verdict(judgement.REFUSED, refusal=Refused("x", "why"))
    assert (refused.key, refused.result, refused.object_key, refused.tag) == ("", None, "", "")
    host = judgement.Verdict(judgement.ACCEPTED, "k", CheckResult("h", None, 1, timestamp=1.0))
    assert host.object_key == "h\t"


def test_a_result_older_than_the_newest_injected_is_stale(tmp_path):
    """Regression: Nagios takes a passive result's time as last_check unconditionally, so a
    replayed week-old OK overwrote today's CRITICAL."""
    with Spool(str(tmp_path / "in.sqlite")) as spool:
        memory = judgement.SpoolMemory(spool)
        newer = one(dict(SENDER, result_id="b"), wlcg(when="2024-01-01T00:30:00Z", status="CRITICAL"), memory=memory)
        spool.put([], newest=judgement.memory_rows([newer]))
        older = one(dict(SENDER, result_id="a"), wlcg(when="2024-01-01T00:10:00Z"), memory=memory)
        assert older.outcome == judgement.STALE
        other_object = one(dict(SENDER, result_id="c"), wlcg(service="other", when="2024-01-01T00:10:00Z"),
                           memory=memory)
        assert other_object.outcome == judgement.ACCEPTED


def test_within_one_batch_the_order_of_arrival_counts():
    later, earlier = wlcg(when="2024-01-01T00:30:00Z"), wlcg(when="2024-01-01T00:10:00Z")
    verdicts = judgement.judge_batch(RULES, [(dict(SENDER, result_id="1"), later),
                                             (dict(SENDER, result_id="2"), earlier),
                                             (dict(SENDER, result_id="1"), later)], judgement.NoMemory(), NOW)
    assert [v.outcome for v in verdicts] == [judgement.ACCEPTED, judgement.STALE, judgement.DUPLICATE]


def test_duplicates_are_scoped_by_the_senders_identity(tmp_path):
    """A sender the policy accepts cannot make another sender's result look like a duplicate
    by sending its result_id first."""
    with Spool(str(tmp_path / "in.sqlite")) as spool:
        memory = judgement.SpoolMemory(spool)
        first = one({"nagios_host": "evil.org", "result_id": "r1"}, wlcg(), memory=memory)
        spool.put([], newest=judgement.memory_rows([first]))
        # The same object and time: only the sender tells them apart.
        genuine = one({"nagios_host": "nagios.site-a.org", "result_id": "r1"}, wlcg(), memory=memory)
        assert genuine.outcome == judgement.ACCEPTED
        again = one({"nagios_host": "evil.org", "result_id": "r1"}, wlcg(), memory=memory)
        assert again.outcome == judgement.DUPLICATE


def test_the_memory_forgets_only_what_freshness_refuses_anyway(tmp_path):
    with Spool(str(tmp_path / "in.sqlite")) as spool:
        memory = judgement.SpoolMemory(spool)
        spool.put([], newest=[("h\ts", 100.0, "a" * 16), ("h\tt", 200.0, "b" * 16)])
        memory.forget(150.0)
        assert memory.recall(["h\ts", "h\tt"]) == {"h\tt": (200.0, ["b" * 16])}


def test_the_newest_time_keeps_the_tags_of_its_results_and_a_later_time_replaces_them(tmp_path):
    with Spool(str(tmp_path / "in.sqlite")) as spool:
        memory = judgement.SpoolMemory(spool)
        spool.put([], newest=[("h\ts", 200.0, "a" * 16), ("h\ts", 200.0, "b" * 16), ("h\ts", 100.0, "c" * 16)])
        assert memory.recall(["h\ts"]) == {"h\ts": (200.0, ["a" * 16, "b" * 16])}
        spool.put([], newest=[("h\ts", 300.0, "d" * 16)])
        assert memory.recall(["h\ts"]) == {"h\ts": (300.0, ["d" * 16])}
        # Bounded: past NEWEST_TAGS_MAX tags of one time, they start again from the latest.
        tags = [f"{i:016x}" for i in range(spool_module.NEWEST_TAGS_MAX + 1)]
        spool.put([], newest=[("h\tu", 400.0, tag) for tag in tags])
        assert memory.recall(["h\tu"]) == {"h\tu": (400.0, [tags[-1]])}


def test_a_redelivery_of_the_newest_result_is_a_duplicate_and_of_an_older_one_stale(tmp_path):
    with Spool(str(tmp_path / "in.sqlite")) as spool:
        memory = judgement.SpoolMemory(spool)
        older = one(dict(SENDER, result_id="a"), wlcg(when="2024-01-01T00:10:00Z"), memory=memory)
        newer = one(dict(SENDER, result_id="b"), wlcg(when="2024-01-01T00:30:00Z"), memory=memory)
        same_time = one(dict(SENDER, result_id="c"), wlcg(when="2024-01-01T00:30:00Z"), memory=memory)
        spool.put([], newest=judgement.memory_rows([older, newer, same_time]))
    with Spool(str(tmp_path / "in.sqlite")) as spool:             # held across a restart
        memory = judgement.SpoolMemory(spool)
        again = [one(dict(SENDER, result_id=rid), wlcg(when=when), memory=memory).outcome
                 for rid, when in (("a", "2024-01-01T00:10:00Z"), ("b", "2024-01-01T00:30:00Z"),
                                   ("c", "2024-01-01T00:30:00Z"), ("d", "2024-01-01T00:30:00Z"))]
        assert again == [judgement.STALE, judgement.DUPLICATE, judgement.DUPLICATE, judgement.ACCEPTED]


def test_marks_keep_the_later_time():
    import tempfile
    with tempfile.TemporaryDirectory() as directory, Spool(os.path.join(directory, "s.sqlite")) as spool:
        spool.put([], marks=[("newest", "h\ts", 200.0)])
        spool.put([], marks=[("newest", "h\ts", 100.0)])
        assert spool.find_marks("newest", ["h\ts"]) == {"h\ts": 200.0}


# -- the poison guard ---------------------------------------------------------------------------

def _die_while_judging(path, headers, body):
    guard = PoisonGuard(path)
    guard.judging(fingerprint(headers, body))
    os._exit(9)                     # killed mid-judgement: nothing after this runs


def _die(path, headers, body):
    child = multiprocessing.get_context("fork").Process(target=_die_while_judging, args=(path, headers, body))
    child.start()
    child.join(10)
    assert child.exitcode == 9


def test_a_message_that_killed_the_bridge_twice_while_judged_is_poison(tmp_path):
    path = str(tmp_path / "inbound.sqlite.judging")
    headers, body = dict(SENDER, result_id="poison"), wlcg()
    _die(path, headers, body)
    assert not PoisonGuard(path).is_suspect(fingerprint(headers, body)), "one death may have another cause"
    _die(path, headers, body)                            # judged again, and the bridge died again
    guard = PoisonGuard(path)
    assert guard.is_suspect(fingerprint(headers, body))
    redelivered = dict(headers, redelivered="true", ack="another-ack-id")
    assert guard.is_suspect(fingerprint(redelivered, body)), "redelivery must not change the fingerprint"
    assert not guard.is_suspect(fingerprint(dict(SENDER, result_id="other"), body))
    guard.caught(fingerprint(headers, body))
    guard.close()
    assert not PoisonGuard(path).is_suspect(fingerprint(headers, body)), "a caught poison is forgotten"


def test_a_suspect_judged_without_dying_is_cleared(tmp_path):
    """Regression (fault suite, kill -9 of the bridge mid-stream): the message being judged when
    the bridge was killed from outside was dead-lettered as poison: a result lost to Nagios."""
    path = str(tmp_path / "judging")
    headers, body = dict(SENDER, result_id="innocent"), wlcg()
    _die(path, headers, body)
    guard = PoisonGuard(path)
    assert list(guard.strikes) == [fingerprint(headers, body)] and not guard.is_suspect(fingerprint(headers, body))
    guard.judging(fingerprint(headers, body))
    guard.idle()
    guard.close()
    assert list(PoisonGuard(path).strikes) == []


def test_a_batch_handled_leaves_no_suspect(tmp_path):
    path = str(tmp_path / "judging")
    guard = PoisonGuard(path)
    guard.judging(fingerprint(SENDER, wlcg()))
    guard.idle()
    guard.close()
    assert list(PoisonGuard(path).strikes) == []


def test_the_suspect_list_is_bounded(tmp_path):
    path = str(tmp_path / "judging")
    for index in range(150):
        guard = PoisonGuard(path)
        guard.judging(fingerprint({}, b"%d" % index))
        guard.close()
    assert len(PoisonGuard(path).strikes) == 100


def test_a_damaged_guard_file_is_read_as_no_suspects(tmp_path):
    path = tmp_path / "judging"
    path.write_bytes(os.urandom(5000))
    assert list(PoisonGuard(str(path)).strikes) == []
    assert json.dumps(list(PoisonGuard(str(path)).strikes)) == "[]"


def test_the_subscriber_dead_letters_a_suspect_as_poison_without_judging_it(tmp_path, monkeypatch):
    from msg_nagios_bridge import config
    from msg_nagios_bridge.daemon.health import Health
    from msg_nagios_bridge.inbound.subscriber import Subscriber
    settings = config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp_path}}}
sources: {{ocsp_pipe: {{enabled: false}}}}
inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders: ['*']}}]}}}}
""")
    headers, body = dict(SENDER, result_id="killer"), wlcg()
    spool_path = str(tmp_path / "inbound.sqlite")
    _die(spool_path + ".judging", headers, body)
    _die(spool_path + ".judging", headers, body)        # twice: poison
    judged = []
    monkeypatch.setattr(judgement, "judge_one", lambda *args: judged.append(args) or judgement.Verdict(
        judgement.REFUSED, refusal=judgement.Refused("x", "judged")))
    with Spool(spool_path) as spool:
        subscriber = Subscriber(settings.brokers, settings.inbound, spool, Health(), ALLOW_ALL)
        verdicts = subscriber._judge([(dict(headers, redelivered="true"), body), (SENDER, wlcg(service="other"))],
                                     time.time())
        assert verdicts[0].refusal.reason == "poison" and len(judged) == 1, "only the other message is judged"
        subscriber._refuse(headers, body, verdicts[0].refusal)
        (letter,) = spool.dead_letters()
        assert letter.entry.message.headers["refused"] == "poison" and letter.entry.message.body == body
        subscriber.poison.close()
    assert list(PoisonGuard(spool_path + ".judging").strikes) == [], "caught: forgotten"


def test_the_stomp_frame_parser_before_the_judgement_is_linear_too():
    """stomp.py parses every frame on its receiver thread before the bridge sees it."""
    from stomp import utils
    for headers in ([(b"h%d" % i, b"v") for i in range(MiB // 10)], [(b"x" * MiB, b"v")],
                    [(b"k", b"\\c" * (MiB // 2))], [(b"k", b"\\" * MiB)]):
        frame = b"MESSAGE\n" + b"".join(b"%s:%s\n" % pair for pair in headers) + b"\n" + b"body"
        started = time.perf_counter()
        utils.parse_frame(frame)
        assert time.perf_counter() - started < 1.0


# -- signed messages: the verified identity, and what the signature must cover ------------------

@pytest.fixture(scope="module")
def signing_pki(tmp_path_factory):
    from tests.sandbox.pki import Authority
    authority = Authority(tmp_path_factory.mktemp("pki"))
    for attempt in range(20):      # a DER length that leaves unused bits in base64 (ECDSA varies it)
        cert_key = authority.issue(f"site-a-{attempt}", "nagios.site-a.org", client=True)
        if len(_der(cert_key[0])) % 3:
            return authority, cert_key
    raise AssertionError("no certificate with a DER length that is not a multiple of 3")


def _der(cert_file):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).public_bytes(serialization.Encoding.DER)


def _signed(pki, headers, body):
    from msg_nagios_bridge.trust.signing import Signer
    signer = Signer(str(pki[1][0]), str(pki[1][1]))
    return dict(headers, **signer.sign(headers, body))


def _signed_rules(pki):
    from msg_nagios_bridge.trust.signing import Verifier
    return judgement.Rules(mapping=Mapping(), policy=ALLOW_ALL, verifier=Verifier(str(pki[0].cert_file)))


def test_the_headers_the_judgement_reads_are_the_ones_a_signature_covers():
    from msg_nagios_bridge.trust.signing import SIGNED_HEADERS
    assert set(judgement.HEADERS_READ) == set(SIGNED_HEADERS)


def test_a_replayed_signed_result_is_a_duplicate_however_its_signer_header_is_reencoded(tmp_path, signing_pki):
    """Regression: duplicates were scoped by the raw signer header, and re-encoding its base64
    with other padding bits made a new key for the same certificate."""
    import base64
    body = wlcg(when="2024-01-01T00:59:00Z")
    headers = _signed(signing_pki, {"result_id": "r1", "role": "site"}, body)
    with Spool(str(tmp_path / "in.sqlite")) as spool:
        memory = judgement.SpoolMemory(spool)
        first = one(headers, body, _signed_rules(signing_pki), memory)
        assert first.outcome == judgement.ACCEPTED and first.sender == "CN=nagios.site-a.org,O=msg-nagios-bridge tests"
        spool.put([], newest=judgement.memory_rows([first]))
        der = base64.b64decode(headers["signer"])
        reencoded = base64.b64encode(der).decode().rstrip("=")
        padding = "=" * (-len(reencoded) % 4)
        assert padding, "the test certificate's DER must leave unused bits in its last base64 character"
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        last = alphabet.index(reencoded[-1])       # the unused low bits set: the same bytes decoded
        reencoded = reencoded[:-1] + alphabet[last | (3 if len(padding) == 1 else 15)] + padding
        assert reencoded != headers["signer"] and base64.b64decode(reencoded) == der
        verdict = one(dict(headers, signer=reencoded), body, _signed_rules(signing_pki), memory)
        assert verdict.outcome == judgement.DUPLICATE, verdict


def test_a_read_header_the_signature_does_not_cover_is_refused(signing_pki):
    body = wlcg(when="2024-01-01T00:59:00Z")
    headers = _signed(signing_pki, {"result_id": "r1"}, body)
    verdict = one(dict(headers, role="central"), body, _signed_rules(signing_pki))
    assert verdict.outcome == judgement.REFUSED and verdict.refusal.reason == "unsigned-header"
    assert "'role'" in verdict.refusal.message


def test_the_memory_forgets_in_bounded_steps_with_the_same_outcome(tmp_path):
    """A sweep looks at most ``scan`` objects a step; stepped or whole, the same rows remain."""
    rows = [(f"h{i:02}\ts", 800.0 + 50 * i, f"{i:016x}") for i in range(10)]
    outcomes = []
    for stepped in (True, False):
        with Spool(str(tmp_path / f"in-{stepped}.sqlite")) as spool:
            memory = judgement.SpoolMemory(spool)
            spool.put([], newest=rows)
            if stepped:
                memory.start_forgetting(900.0)
                steps = 1
                while memory.forget_some(scan=3):
                    steps += 1
                assert steps == 4, "10 objects in steps of 3"
                assert not memory.forget_some(scan=3), "a finished sweep does nothing"
            else:
                memory.forget(900.0)
            outcomes.append(memory.recall([obj for obj, _, _ in rows]))
    assert outcomes[0] == outcomes[1] and sorted(outcomes[0]) == [obj for obj, _, _ in rows[2:]]


def test_a_dedupe_key_is_the_same_whether_its_sender_hash_was_remembered():
    """The sender's hash in a dedupe key is remembered for short senders only (2026-12-06): the
    key is the same either way, and a long sender is not kept."""
    import hashlib
    judgement._short_scope.cache_clear()
    for identity in ("nagios.remote.org", "x" * 256, "y" * 257, "/DC=org/CN=\u00e9"):
        expected = hashlib.blake2b(identity.encode("utf-8"), digest_size=8).hexdigest()
        for _ in range(2):
            assert judgement.dedupe_key(identity, {"result_id": "r1"}, b"") == f"id:{expected}:r1"
    assert judgement._short_scope.cache_info().currsize == 3
