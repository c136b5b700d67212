"""One TLS connection through msg_nagios_bridge.broker, run as a script by any interpreter.

    PYTHON tls_client.py '{"port": N, "host": "127.0.0.1", "ca_file": ..., "cert_file": ...,
                           "key_file": ..., "key_password": ..., "revoked_crl": PEM file}'

Imports msg_nagios_bridge and stomp from wherever that interpreter finds them (the checkout
with the venv's stomp.py, or an unpacked .deb with Debian's python3-stomp), connects, sends
one message with a receipt, and prints what happened as one JSON object:
problem (None when connected), version (the data connection's negotiated TLS version),
minimum_version (of the context that made it), receipt, tls_connections (every TLS socket
made in this process), stomp (its version) and openssl (whether python3-openssl imports).
``revoked_crl`` installs a check_peer that refuses a broker whose certificate is on that CRL
(what the grid trust check does with fetch-crl's CRLs).
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
    from msg_nagios_bridge.broker import BrokerConnection
    from msg_nagios_bridge.config import BrokerSettings, TlsSettings
    try:
        import OpenSSL  # noqa: F401 - only: is it there, as on many Debian 12 boxes
        openssl = True
    except ImportError:
        openssl = False

    check_peer = None
    if options.get("revoked_crl"):
        from cryptography import x509
        with open(options["revoked_crl"], "rb") as handle:
            crl = x509.load_pem_x509_crl(handle.read())

        def check_peer(tls_socket):
            cert = x509.load_der_x509_certificate(tls_socket.getpeercert(binary_form=True))
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                return f"revoked (serial {cert.serial_number:x})"
            return None

    tls = TlsSettings(enabled=True, ca_file=options.get("ca_file", ""), cert_file=options.get("cert_file", ""),
                      key_file=options.get("key_file", ""), key_password=options.get("key_password", ""),
                      verify=options.get("verify", True))
    settings = BrokerSettings(hosts=((options.get("host", "127.0.0.1"), options["port"]),), connect_timeout=10,
                              receipt_timeout=10, heartbeat_ms=2000, tls=tls)
    broker = BrokerConnection(settings, check_peer=check_peer)
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
