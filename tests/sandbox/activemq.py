"""Run a real ActiveMQ 5.x broker (Debian package) from its own directory, on 127.0.0.1 only."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .ports import LogFiles, free_port, kill_process, stop_process, track, wait_stomp_ready

ACTIVEMQ_HOME = Path("/usr/share/activemq")
HOST = "127.0.0.1"

# What /usr/bin/activemq passes to Java > 8.
JAVA_MODULE_FLAGS = [
    "--add-reads=java.xml=java.logging",
    "--add-opens", "java.base/java.security=ALL-UNNAMED",
    "--add-opens", "java.base/java.net=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.naming/javax.naming.spi=ALL-UNNAMED",
    "--add-opens", "java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.http=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.https=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.jar=ALL-UNNAMED",
    "--add-exports=jdk.xml.dom/org.w3c.dom.html=ALL-UNNAMED",
    "--add-exports=jdk.naming.rmi/com.sun.jndi.url.rmi=ALL-UNNAMED",
]

ACTIVEMQ_XML = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="{name}" useJmx="false"
          persistent="{persistent}" dataDirectory="{data}"{broker_attributes}>
{network}    <persistenceAdapter>
      <kahaDB directory="{kahadb}">
        <locker><shared-file-locker lockAcquireSleepInterval="1000"/></locker>
      </kahaDB>
    </persistenceAdapter>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage percentOfJvmHeap="70"/></memoryUsage>
        <storeUsage><storeUsage limit="2 gb"/></storeUsage>
        <tempUsage><tempUsage limit="1 gb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <transportConnector name="openwire" uri="tcp://{host}:{openwire}"/>
      <transportConnector name="stomp" uri="stomp://{host}:{stomp}"/>
{connectors}    </transportConnectors>
{extra}
  </broker>
</beans>
"""

# ActiveMQ 5.17 on Debian logs through slf4j-log4j12 + log4j 1.2 (lib/optional), which reads
# log4j.properties from the conf dir; log4j2.properties is written too, in case a build uses log4j2.
LOG4J_PROPERTIES = """log4j.rootLogger=INFO, logfile
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.logger.org.apache.activemq.spring=WARN
log4j.appender.logfile=org.apache.log4j.FileAppender
log4j.appender.logfile.file={log}
log4j.appender.logfile.append=true
log4j.appender.logfile.layout=org.apache.log4j.PatternLayout
log4j.appender.logfile.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
"""

LOG4J2_PROPERTIES = """rootLogger.level=INFO
rootLogger.appenderRef.logfile.ref=LogFile
logger.spring.name=org.springframework
logger.spring.level=WARN
logger.xbean.name=org.apache.xbean
logger.xbean.level=WARN
appender.logfile.type=File
appender.logfile.name=LogFile
appender.logfile.fileName={log}
appender.logfile.append=true
appender.logfile.layout.type=PatternLayout
appender.logfile.layout.pattern=%d | %-5p | %m | %c | %t%n
"""


def check_installed():
    """Raise RuntimeError unless java and the ActiveMQ jar are present."""
    missing = []
    if not shutil.which("java"):
        missing.append("java (apt-get install default-jre-headless)")
    if not (ACTIVEMQ_HOME / "bin" / "activemq.jar").exists():
        missing.append(f"{ACTIVEMQ_HOME}/bin/activemq.jar (apt-get install activemq)")
    if missing:
        raise RuntimeError("ActiveMQ sandbox cannot run, missing: " + ", ".join(missing))


class ActiveMQ(LogFiles):
    """One broker: STOMP + OpenWire on 127.0.0.1, KahaDB, config and log in `workdir`."""

    what = "broker"

    def __init__(self, workdir, name="b1", stomp_port=None, openwire_port=None,
                 network_to=(), data_dir=None, extra_xml="", start_timeout=60.0, login=None,
                 extra_connectors="", broker_attributes="", conf_files=None, persistent=True, heap_mb=256):
        self.dir = Path(workdir).resolve()
        self.name = name
        self.stomp_port = stomp_port or free_port()
        self.openwire_port = openwire_port or free_port()
        self.network_to = list(network_to)
        self.data_dir = Path(data_dir).resolve() if data_dir else self.dir / "data"
        self.extra_xml = extra_xml
        self.extra_connectors = extra_connectors   # more <transportConnector .../> lines (e.g. stomp+ssl)
        self.login = login           # (user, password) for the readiness check, when auth is on
        # more attributes of <broker>, e.g. 'populateJMSXUserID="true"'
        self.broker_attributes = f" {broker_attributes.strip()}" if broker_attributes.strip() else ""
        # {file name: text} written into conf/ (on the classpath), e.g. JAAS's login.config and
        # users.properties; a login.config there is also passed as java.security.auth.login.config.
        self.conf_files = dict(conf_files or {})
        self.start_timeout = start_timeout
        # False: persistent="false", a broker that keeps messages in memory only (ActiveMQ then
        # ignores the configured KahaDB): what it holds is lost when it dies.
        self.persistent = persistent
        # The JVM's heap (-Xmx). 256 MB holds the tests' and the default benchmarks' messages;
        # 60,000 messages of 12 headers each waiting in one queue ran it out (OutOfMemoryError).
        self.heap_mb = heap_mb
        self.log_file = self.dir / "activemq.log"
        self.console_file = self.dir / "console.log"
        self.conf_file = self.dir / "conf" / "activemq.xml"
        self.proc = None
        self.started_in = None  # seconds the last start() took until STOMP answered

    # -- addresses -------------------------------------------------------------------------------
    @property
    def stomp_address(self):
        """(host, port) of the STOMP connector, as stomp.py wants it."""
        return (HOST, self.stomp_port)

    @property
    def openwire_uri(self):
        return f"tcp://{HOST}:{self.openwire_port}"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- config ----------------------------------------------------------------------------------
    def write_config(self):
        """(Re)write conf/activemq.xml and the logging config."""
        conf = self.dir / "conf"
        for d in (conf, self.dir / "data", self.dir / "tmp", self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        network = ""
        if self.network_to:
            network = "    <networkConnectors>\n" + "".join(
                f'      <networkConnector name="{self.name}-to-{port}" '
                f'uri="static:(tcp://{HOST}:{port})" duplex="false"/>\n'
                for port in self.network_to) + "    </networkConnectors>\n"
        self.conf_file.write_text(ACTIVEMQ_XML.format(
            name=self.name, data=self.dir / "data", kahadb=self.data_dir / "kahadb", host=HOST,
            openwire=self.openwire_port, stomp=self.stomp_port, network=network,
            extra=self.extra_xml, connectors=self.extra_connectors, broker_attributes=self.broker_attributes,
            persistent="true" if self.persistent else "false"))
        for name, text in self.conf_files.items():
            (conf / name).write_text(text)
        (conf / "log4j.properties").write_text(LOG4J_PROPERTIES.format(log=self.log_file))
        (conf / "log4j2.properties").write_text(LOG4J2_PROPERTIES.format(log=self.log_file))

    def command(self):
        """The java command line (java itself is the child process)."""
        conf = self.dir / "conf"
        return [
            shutil.which("java") or "java", "-Xms64M", f"-Xmx{self.heap_mb}M", "-Djava.awt.headless=true",
            *JAVA_MODULE_FLAGS,
            f"-Djava.io.tmpdir={self.dir / 'tmp'}",
            f"-Dactivemq.classpath={conf}:{ACTIVEMQ_HOME / 'lib'}/",
            f"-Dactivemq.home={ACTIVEMQ_HOME}",
            f"-Dactivemq.base={self.dir}",
            f"-Dactivemq.conf={conf}",
            f"-Dactivemq.data={self.dir / 'data'}",
            f"-Dlog4j.configuration=file:{conf / 'log4j.properties'}",
            f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
            *([f"-Djava.security.auth.login.config={conf / 'login.config'}"]
              if "login.config" in self.conf_files else []),
            "-jar", str(ACTIVEMQ_HOME / "bin" / "activemq.jar"),
            "start", f"xbean:file:{self.conf_file}",
        ]

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, wait=True):
        """Start java as a child process; with `wait`, return once STOMP answers a CONNECT."""
        if self.running():
            raise RuntimeError(f"broker {self.name} already running (pid {self.pid})")
        check_installed()
        self.write_config()
        self._t0 = time.monotonic()
        with open(self.console_file, "ab") as out:
            self.proc = subprocess.Popen(self.command(), cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        track(self)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                kill_process(self.proc)  # never leave a half-started server behind
                raise
        return self

    def wait_ready(self, timeout=None):
        """Wait until the STOMP port accepts a STOMP CONNECT; raise with the log tail if not."""
        return wait_stomp_ready(self, "broker", timeout or self.start_timeout, login=self.login)

    def stop(self, timeout=15.0):
        """SIGTERM (after SIGCONT), wait up to `timeout`, then SIGKILL."""
        return stop_process(self.proc, timeout)

    def kill(self):
        """SIGKILL: a crash, KahaDB must recover on the next start."""
        return kill_process(self.proc)

    def pause(self):
        """SIGSTOP: the broker hangs with its sockets open."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        """SIGCONT."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, wait=True):
        """Stop (if running) and start again with the same ports and data dir."""
        self.stop()
        return self.start(wait=wait)

    # -- logs (LogFiles: log_text, log_tail, wait_for_log) -------------------------------------

    def wait_bridges(self, timeout=30.0):
        """Wait until every `network_to` bridge of this broker is established."""
        self.wait_for_log(r"Network connection between .* has been established",
                          timeout, count=len(self.network_to))

    def __enter__(self):
        return self.start() if not self.running() else self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<ActiveMQ {self.name} stomp={self.stomp_port} openwire={self.openwire_port} pid={self.pid}>"
