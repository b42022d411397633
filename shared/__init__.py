"""Code both the server and the clients import: settings, errors, dataset layout, wire formats."""

import os

# Hospital software must not phone home: Flower's telemetry is read from the environment when
# flwr is first imported, and every entry point imports this package before flwr.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
