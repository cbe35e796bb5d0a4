"""``kafka-stripe demo``: embedded Kafka → the connector → the Stripe emulator, checked end to end.

command (options, the run), workload (the records), stack (processes, Stripe calls), display, report.
"""

from connector.devtools.demo.command import add_arguments, run
from connector.devtools.demo.stack import DEFAULT_CUSTOMERS

__all__ = ["DEFAULT_CUSTOMERS", "add_arguments", "run"]
