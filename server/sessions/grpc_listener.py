"""The session's gRPC listener: Flower's legacy servicer, told who connects, with a sized message cap.

Flower's ``start_grpc_server`` hides the peer from the client manager and accepts messages up to
2 GiB. This starts the same servicer through Flower's own ``generic_create_grpc_server``, with
two changes: each new stream records its peer address before Flower registers the client (so
admission can cap unproven connections per address, telling those over the cap when to come
back), and messages are capped at what this session's model can need (:func:`message_cap`), so
no one can make the server buffer gigabytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
from flwr.common.grpc import generic_create_grpc_server
from flwr.proto.transport_pb2 import ServerMessage
from flwr.proto.transport_pb2_grpc import add_FlowerServiceServicer_to_server
from flwr.server.client_manager import ClientManager
from flwr.server.superlink.fleet.grpc_bidi.flower_service_servicer import (
    FlowerServiceServicer,
)

from server.sessions.admission import joining_from, retry_after_s

#: Room for everything besides the weights: metrics, configs, secure-aggregation key shares.
MESSAGE_SLACK_BYTES = 4 << 20


def message_cap(weights: list[np.ndarray]) -> int:
    """Bytes one gRPC message may hold: the model's values at 8 bytes each (secure aggregation
    sends them as uint64), twice over for encoding overhead, plus fixed slack."""
    values = sum(int(np.asarray(w).size) for w in weights)
    return 2 * 8 * values + MESSAGE_SLACK_BYTES


def peer_address(peer: str) -> str:
    """``ipv4:10.0.0.5:53712`` -> ``10.0.0.5``; ``ipv6:[::1]:53712`` -> ``::1``."""
    _, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0] or rest
    return host.strip("[]") or peer


class _PeerRecordingServicer(FlowerServiceServicer):
    """Flower's servicer, recording the peer on the thread that registers the client.

    A connection admission turned away for capacity gets one ``ReconnectIns`` instead of an
    empty stream: Flower's client answers it, waits that long and connects again, whereas an
    empty stream ends its ``start_client`` with an error and the site never joins.
    """

    def Join(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        joining_from(peer_address(context.peer()))
        registered = False
        for message in super().Join(request_iterator, context):
            registered = True
            yield message
        seconds = retry_after_s()
        if not registered and seconds is not None:
            yield ServerMessage(reconnect_ins=ServerMessage.ReconnectIns(seconds=seconds))


def start_session_server(
    client_manager: ClientManager,
    address: str,
    *,
    max_message_length: int,
    certificates: tuple[bytes, bytes, bytes] | None = None,
) -> grpc.Server:
    """Start the session's gRPC server on ``address`` (``host:port``) and return it."""
    server = generic_create_grpc_server(
        servicer_and_add_fn=(_PeerRecordingServicer(client_manager), add_FlowerServiceServicer_to_server),
        server_address=address,
        max_message_length=max_message_length,
        certificates=certificates,
    )
    server.start()
    return server
