"""What a person must never see in a command's output: the libraries' own lines."""

from __future__ import annotations

import re

#: What TensorFlow, XLA, absl, Keras, TF-Privacy, Flower and gRPC print when nobody stops them.
NOISE = re.compile(r"cuda|cudnn|cufft|cublas|tensorrt|onednn|tensorflow|xla|absl|keras|warning|deprecat|flwr|"
                   r"flower|grpc|^[IWE]\d{4} ", re.IGNORECASE | re.MULTILINE)


def library_lines(text: str) -> list[str]:
    """The lines of ``text`` that came from a library, not from us (empty when quiet)."""
    return [line for line in text.splitlines() if NOISE.search(line)]
