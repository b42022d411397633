"""Coverage-guided fuzzing (atheris) of what the request socket does with a frame body.

    python -m tests.fuzz_protocol -runs=20000

Any exception other than ``ProtocolError`` from decoding and validating a frame is a bug: the
server would answer it as an internal error instead of a clear protocol error.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from shared import framing, protocol
    from shared.errors import ProtocolError


def test_one_input(data: bytes) -> None:
    try:
        protocol.parse_message(framing.decode_body(data))
    except ProtocolError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
