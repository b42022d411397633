"""Round overhead outside training (serialise, send, validate, aggregate) vs a raw memory copy, and where it goes.

A real session (``run_session``: Flower gRPC on loopback, ``AdmittedFedProx``, SQLite store)
runs with numpy clients that return their update at once, so each fit round's wall time is pure
transport and aggregation. It is compared with copying the same bytes in memory once (global
weights out to every site, updates back). Done for the head-only update and for a full ResNet50
update (every stage trainable). Ends with ``transport_overhead_ratio R`` (head-only).

The head-only rounds are also broken down (``bench.stage_clock``: the functions that make each
stage are wrapped, time is exclusive): Flower's numpy <-> bytes (``np.save``/``np.load`` per
array), Flower's objects <-> protobuf messages, Flower's client-side message records, our
admission (session secret of each result), validation, aggregation and the store's round
record, each as the CPU time of the thread that ran it. Protobuf's own encode/decode runs inside
gRPC where nothing can be wrapped, so it is timed apart on the same messages. The sites run in
this process, so their side is counted too; the rest of the process's CPU time is gRPC's C++
threads, the hand-offs between threads and Flower's loops.

    python -m bench.transport --sites 2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flwr.client.message_handler.message_handler as flower_handler
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameter,
    recorddict_compat,
    serde,
)
from flwr.proto.transport_pb2 import ClientMessage, ServerMessage

from bench.stage_clock import StageClock
from server.sessions.fedprox import AdmittedFedProx
from server.sessions.runtime import run_session
from server.store import Store
from shared.logging_setup import quiet_script
from shared.settings import load_settings
from tests.flower_fakes import ScriptedClient, free_port, run_in_thread
from tests.privacy_fixtures import charged_session

STORE_STAGE = "ours: store round record (SQLite, audit chain)"
PROCESS_CPU = "process CPU"
PROTOBUF_STAGE = "protobuf encode + decode (inside gRPC; timed apart)"
#: (owner, attribute, stage) of every wrapped function.
STAGES = [
    (parameter, "ndarray_to_bytes", "Flower: numpy -> bytes (np.save per array)"),
    (parameter, "bytes_to_ndarray", "Flower: bytes -> numpy (np.load per array)"),
    *[(serde, name, "Flower: objects <-> protobuf messages")
      for name in ("fit_ins_to_proto", "fit_ins_from_proto", "fit_res_to_proto", "fit_res_from_proto")],
    (recorddict_compat, "fitins_to_recorddict", "Flower: sites' message records"),
    (recorddict_compat, "recorddict_to_fitres", "Flower: sites' message records"),
    (flower_handler, "recorddict_to_fitins", "Flower: sites' message records"),
    (flower_handler, "fitres_to_recorddict", "Flower: sites' message records"),
    (AdmittedFedProx, "configure_fit", "ours: per-site fit instructions"),
    (AdmittedFedProx, "_admit", "ours: admission (session secret of each result)"),
    (AdmittedFedProx, "_count_is_approved", "ours: approved example count"),
    (AdmittedFedProx, "_update_is_sound", "ours: update validation (shapes, finite, norm)"),
    (AdmittedFedProx, "_combine", "ours: aggregation (example-weighted mean)"),
]


def model_shapes(trainable_blocks: int) -> list[tuple[int, ...]]:
    """Shapes of the travelling weights of the real classifier (built once, 32 px)."""
    from shared.classifier import build_classifier

    classifier = build_classifier(32, trainable_blocks=trainable_blocks, weights=None, seed=0)
    return [tuple(v.shape) for v in classifier.full.trainable_variables]


def fit_rounds(shapes: list[tuple[int, ...]], sites: int, rounds: int,
               clock: StageClock | None = None) -> list[tuple[float, dict[str, float]]]:
    """Wall time of each fit round (training takes no time) in a real session, and its stage times."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s).astype(np.float32) * 0.01 for s in shapes]
    clock = clock or StageClock()
    with tempfile.TemporaryDirectory() as home:
        store = Store.open(load_settings(home=Path(home)))
        store.ensure_initial_version(weights, metadata={"model": {}})
        names = [f"site{i}" for i in range(sites)]
        for name in names:
            store.enrol_site(name)
        config = {"proximal_mu": 0.0, "min_clients": sites, "join_timeout_s": 120, "round_timeout_s": 600,
                  "max_update_norm": 1e9, "learning_rate": 0.1}
        session = charged_session(store, dict.fromkeys(names, 100), rounds=rounds, config=config, batch_size=8)
        port = free_port()
        store.mark_session_running(session.id, port=port, pid=os.getpid())
        marks: list[tuple[str, float, dict[str, float]]] = []
        clock.wrap(store, "record_round", STORE_STAGE)
        record = store.record_round

        def timed_record(session_id: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
            record(session_id, **kwargs)
            marks.append((kwargs["phase"], time.perf_counter(), {**clock.snapshot(), PROCESS_CPU: time.process_time()}))

        store.record_round = timed_record  # type: ignore[method-assign]
        server = threading.Thread(target=run_session, args=(store, session.id), kwargs={"port": port})
        server.start()
        clients = [ScriptedClient(n, store.session_secret(session.id, n), 100, lambda w: [a + 1e-3 for a in w])
                   for n in names]
        for client in clients:
            run_in_thread(port, client)
        joined = (time.perf_counter(), {**clock.snapshot(), PROCESS_CPU: time.process_time()})
        server.join()
        store.close()
    # A fit round runs from the previous round's record (or the joins) to its own fit record.
    previous, measured = joined, []
    for phase, at, totals in marks:
        if phase == "fit":
            measured.append((at - previous[0], {k: v - previous[1].get(k, 0.0) for k, v in totals.items()}))
        previous = (at, totals)
    return measured[1:] or measured  # the first round also waits for the sites to join


def protobuf_seconds(shapes: list[tuple[int, ...]], sites: int) -> float:
    """Encode + decode of one round's messages (global weights to each site, each update back)."""
    arrays = [np.ones(s, np.float32) for s in shapes]
    parameters = ndarrays_to_parameters(arrays)
    down = ServerMessage(fit_ins=serde.fit_ins_to_proto(FitIns(parameters, {"round": 1})))
    up = ClientMessage(fit_res=serde.fit_res_to_proto(FitRes(Status(Code.OK, ""), parameters, 100, {})))
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(sites):
            ServerMessage.FromString(down.SerializeToString())
            ClientMessage.FromString(up.SerializeToString())
        best = min(best, time.perf_counter() - started)
    return best


def raw_copy_seconds(shapes: list[tuple[int, ...]], sites: int) -> float:
    """Copy the bytes a round moves (weights to each site and back) once, in memory."""
    arrays = [np.ones(s, np.float32) for s in shapes]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(2 * sites):
            [a.copy() for a in arrays]
        best = min(best, time.perf_counter() - started)
    return best


def print_breakdown(rounds: list[tuple[float, dict[str, float]]], protobuf_s: float) -> None:
    """Median CPU milliseconds per round of each stage, and the rest of the process's CPU time."""
    wall = statistics.median(r for r, _ in rounds)
    stages = sorted({stage for _, totals in rounds for stage in totals if not stage.endswith(" calls")}
                    - {PROCESS_CPU})
    medians = {stage: statistics.median(totals.get(stage, 0.0) for _, totals in rounds) for stage in stages}
    calls = {stage: statistics.median(totals.get(f"{stage} calls", 0.0) for _, totals in rounds) for stage in stages}
    medians[PROTOBUF_STAGE], calls[PROTOBUF_STAGE] = protobuf_s, 0
    cpu = statistics.median(totals[PROCESS_CPU] for _, totals in rounds)
    print(f"  where a head-only fit round goes: {wall * 1e3:.1f} ms wall, {cpu * 1e3:.1f} ms CPU of this process "
          f"(server and sites), median CPU ms (calls) per round over {len(rounds)} rounds:")
    for stage, seconds in sorted(medians.items(), key=lambda item: -item[1]):
        print(f"    {stage:<56s} {seconds * 1e3:7.2f} ({calls[stage]:.0f})")
    print(f"    {'rest: gRPC (C++ threads), thread hand-offs, Flower loop':<56s} "
          f"{(cpu - sum(medians.values())) * 1e3:7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--head-only", action="store_true", help="skip the full ResNet50 update")
    args = parser.parse_args(argv)
    quiet_script(__file__)  # library and TensorFlow start-up lines go to the log file, not here
    ratios = {}
    for name, blocks in (("head-only", 0), ("full ResNet50", 4))[:1 if args.head_only else 2]:
        shapes = model_shapes(blocks)
        megabytes = sum(int(np.prod(s)) for s in shapes) * 4 / 1e6
        clock = StageClock()
        if blocks == 0:
            for owner, attribute, stage in STAGES:
                clock.wrap(owner, attribute, stage)
        try:
            rounds = fit_rounds(shapes, args.sites, args.rounds, clock)
        finally:
            clock.restore()
        round_s = statistics.median(r for r, _ in rounds)
        copy_s = raw_copy_seconds(shapes, args.sites)
        ratios[name] = round_s / copy_s
        print(f"{name}: {megabytes:.1f} MB update, {args.sites} sites: fit round {round_s * 1e3:.1f} ms "
              f"({min(r for r, _ in rounds) * 1e3:.1f}-{max(r for r, _ in rounds) * 1e3:.1f}) "
              f"vs raw copy {copy_s * 1e3:.2f} ms ({ratios[name]:.0f}x)")
        if blocks == 0:
            print_breakdown(rounds, protobuf_seconds(shapes, args.sites))
    print(f"transport_overhead_ratio {ratios['head-only']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
