"""A remote result as Icinga 2's ``process-check-result`` request, and what Icinga's answer means.

Pure: values in, values out (the writer, writer.py, does the I/O). Facts from the real 2.13
are in docs/icinga2-notes.md:

* The object is named in the query (``?service=HOST!SVC`` / ``?host=HOST``), never a filter:
  no ``filter-expression`` permission needed (2.16.2+), and an unknown object is a 404 for
  that object alone.
* ``plugin_output`` is kept whole (the first line is the short output), so it is output +
  "\\n" + long_output. ``performance_data`` goes as the string: Icinga splits it at blanks
  outside quotes, as Nagios does.
* ``execution_start`` / ``execution_end`` carry the result's own check time (Icinga drops, with
  a 200, a result older than the object's current one).
* Hosts take only exit status 0 (UP) or 1 (DOWN): DOWN and UNREACHABLE both go as 1.
"""
from __future__ import annotations

import enum
import json
import urllib.parse
from typing import Any, NamedTuple, Optional, Tuple

from ...model import CheckResult
from ..nagios.nagios_command import clean_text

# Icinga's 1 MiB body limit is applied to chunked bodies only (a Content-Length body of any
# size is read whole): the bridge keeps its own limit so a result never costs Icinga more.
MAX_BODY_BYTES = 1 << 20

HOST_EXIT_STATUS = (0, 1, 1)    # UP, DOWN, UNREACHABLE -> what a Host accepts


def object_name(result: CheckResult) -> str:
    """Icinga's name of the result's object: "HOST!SERVICE" or "HOST"."""
    return result.host if result.service is None else f"{result.host}!{result.service}"


def request(result: CheckResult, check_source: str) -> Tuple[str, dict]:
    """(path with query, JSON body) of the process-check-result request for ``result``."""
    kind = "host" if result.service is None else "service"
    path = "/v1/actions/process-check-result?" + urllib.parse.urlencode({kind: object_name(result)},
                                                                        quote_via=urllib.parse.quote, safe="")
    # The Nagios writers' control-character policy (nagios_command.clean_text: C0 and C1 controls
    # but tab and newline become spaces): ESC or U+009B kept in Icinga's state would reach the
    # terminal of whoever lists objects (review 2026-12-05).
    output = clean_text(result.output + ("\n" + result.long_output if result.long_output else ""))
    body: dict = {
        "type": kind.capitalize(),
        "exit_status": HOST_EXIT_STATUS[result.state] if kind == "host" else result.state,
        "plugin_output": output,
        "check_source": check_source,
    }
    if result.perfdata:
        body["performance_data"] = clean_text(result.perfdata)
    if result.timestamp > 0:
        body["execution_start"] = body["execution_end"] = result.timestamp
    return path, body


def body_size(body: dict) -> int:
    """Bytes of ``body`` as the API client sends it (json.dumps, UTF-8)."""
    return len(json.dumps(body).encode("utf-8"))


class Action(enum.Enum):
    """What the writer does with a spool entry after Icinga's answer for its object."""
    INJECTED = "injected"           # 200: delete the entry
    IGNORED = "ignored"             # 200 that says Icinga ignored it (unreachable object): delete, count
    DEAD_LETTER = "dead letter"     # Icinga will never take it: move to the dead letters
    CREDENTIALS = "credentials"     # 401: keep it, back off, say the credentials are refused
    RETRY = "retry"                 # Icinga cannot take it now: keep it, back off


class Verdict(NamedTuple):
    action: Action
    reason: str = ""        # dead letters: "<counter name>: text"; else what to log / show
    # Icinga's answer for this object, which it may give every result (403; 404, which also
    # means a missing permission; a 5xx in the object's own entry: its action failed), unlike
    # a 400 (this result's fault) or a 5xx without one (Icinga going down, a proxy): the
    # writer watches for a run of them over different objects.
    for_object: bool = False


UNKNOWN_OBJECT = "unknown-object"
ICINGA_REFUSED = "icinga-refused"
TOO_BIG = "too-big"


def unknown_object_reason(name: str, answered: bool) -> str:
    """The dead letter reason for an object Icinga does not know: refused before sending
    (not in the object list) or answered 404, which also means a missing permission."""
    if not answered:
        return f"{UNKNOWN_OBJECT}: Icinga 2's object list has no {name!r}"
    return (f"{UNKNOWN_OBJECT}: Icinga 2 answered 404 for {name!r} (the object does not exist, or the"
            " ApiUser lacks the permission actions/process-check-result)")


def judge(status: int, answer: Any, name: str) -> Verdict:
    """The action for Icinga's answer ``(status, answer)`` to the request for object ``name``.

    The object's own entry (``results[0].code``) decides when there is one; it matches the
    HTTP status for a named object, but a proxy or an odd answer must not turn an error
    into a success."""
    code, text, own = status, "", False
    if isinstance(answer, dict):
        results = answer.get("results")
        if isinstance(results, list) and results and isinstance(results[0], dict):
            entry = results[0]
            own = isinstance(entry.get("code"), int) and not isinstance(entry.get("code"), bool)
            code = entry["code"] if own else status
            text = str(entry.get("status", ""))
        else:
            text = str(answer.get("status", ""))
    elif isinstance(answer, str):
        text = answer[:200]
    if code == 200 and status == 200:
        if text.startswith("Ignoring"):
            return Verdict(Action.IGNORED, text)
        return Verdict(Action.INJECTED, text)
    if code == 404 or status == 404:
        return Verdict(Action.DEAD_LETTER, unknown_object_reason(name, answered=True), for_object=True)
    if code in (400, 403) or status in (400, 403):
        return Verdict(Action.DEAD_LETTER, f"{ICINGA_REFUSED}: {code} {text or 'no reason given'}",
                       for_object=code == 403 or status == 403)
    if status == 401 or code == 401:
        return Verdict(Action.CREDENTIALS, f"Icinga 2 refuses the bridge's credentials (401 {text})".strip())
    return Verdict(Action.RETRY, f"Icinga 2 answered {status} {text}".strip(),
                   for_object=own and code >= 500)


def reason_counter(reason: str) -> str:
    """The counter name of a dead letter reason ("unknown-object: ..." -> "unknown-object")."""
    return reason.split(":", 1)[0]


def preview(result: CheckResult, check_source: str) -> Tuple[str, str]:
    """(what, text) for the try-message tool: the request the writer would send."""
    path, body = request(result, check_source)
    return "API request", f"POST {path}\n{json.dumps(body, indent=2, ensure_ascii=False)}\n"


def too_big_reason(size: int) -> Optional[str]:
    if size <= MAX_BODY_BYTES:
        return None
    return (f"{TOO_BIG}: the request would be {size} bytes, over the bridge's {MAX_BODY_BYTES}-byte"
            " limit for one result (lower inbound.mapping.max_output_bytes)")
