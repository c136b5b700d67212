"""One TLS connection through msg_nagios_bridge.broker.connection, run as a script by any interpreter.

    PYTHON tls_client.py '{"port": N, "host": "127.0.0.1", "ca_file": ..., "cert_file": ...,
                           "key_file": ..., "key_password": ..., "crl_file": PEM file}'

Imports msg_nagios_bridge and stomp from wherever that interpreter finds them (the checkout
with the venv's stomp.py, or an unpacked .deb with Debian's python3-stomp), connects, sends
one message with a receipt, and prints what happened as one JSON object:
problem (None when connected), version (the data connection's negotiated TLS version),
minimum_version (of the context that made it), receipt, tls_connections (every TLS socket
made in this process), stomp (its version) and openssl (whether python3-openssl imports).
``crl_file`` gives the CA file's CRL (brokers.tls.crl_file): the bridge's own grid trust check
(gridtrust.TrustStore, after the handshake) then refuses a broker whose certificate it revokes.
"""
import json
import ssl
import sys
import time


def main():
    options = json.loads(sys.argv[1])
    made = []
    wrap_socket = ssl.SSLContext.wrap_socket

    def counting_wrap_socket(context, *args, **kwargs):
        made.append(kwargs.get("server_hostname"))
        return wrap_socket(context, *args, **kwargs)

    ssl.SSLContext.wrap_socket = counting_wrap_socket

    import stomp
    from msg_nagios_bridge.broker.connection import BrokerConnection
    from msg_nagios_bridge.config import BrokerSettings, TlsSettings, TrustRules
    try:
        import OpenSSL  # noqa: F401 - only: is it there, as on many Debian 12 boxes
        openssl = True
    except ImportError:
        openssl = False

    tls = TlsSettings(enabled=True, ca_file=options.get("ca_file", ""), cert_file=options.get("cert_file", ""),
                      key_file=options.get("key_file", ""), key_password=options.get("key_password", ""),
                      verify=options.get("verify", True), rules=TrustRules(crl_file=options.get("crl_file", "")))
    settings = BrokerSettings(hosts=((options.get("host", "127.0.0.1"), options["port"]),), connect_timeout=10,
                              receipt_timeout=10, heartbeat_ms=2000, tls=tls)
    broker = BrokerConnection(settings)
    report = {"problem": broker.connect(), "stomp": ".".join(map(str, stomp.__version__)), "openssl": openssl,
              "receipt": False, "version": None, "minimum_version": None}
    if report["problem"] is None:
        sock = broker.conn.transport.socket
        report["version"] = sock.version()
        report["minimum_version"] = sock.context.minimum_version.name
        broker.begin("t1")
        broker.send("/queue/test.tls", b"over TLS", {"persistent": "true", "transaction": "t1"})
        broker.commit("t1", receipt="r1")
        deadline = time.monotonic() + 10
        while not report["receipt"] and time.monotonic() < deadline:
            broker.events.wakeup.wait(0.5)
            broker.events.wakeup.clear()
            report["receipt"] = any(kind == "receipt" and headers.get("receipt-id") == "r1"
                                    for kind, headers, _ in broker.take_replies())
    else:
        report["closed"] = broker.conn is None
    broker.discard()
    report["tls_connections"] = len(made)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
