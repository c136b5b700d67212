"""msg-nagios-bridge: Nagios <-> MSG (ActiveMQ over STOMP)."""
__version__ = "0.1.0"
