"""The server's ledger tables in a pipe: numbers whole, a patient-level column only when declared."""

from __future__ import annotations

import io
from datetime import datetime, timezone

from rich.console import Console

from server.history.privacy_views import ledger_view
from server.store.records import ChargeInfo
from shared.privacy_accounting import DpSchedule
from shared.terminal import PIPE_COLUMNS


def _charge(site: str, rate_examples: int, slices: int | None) -> ChargeInfo:
    schedule = DpSchedule.for_epochs(noise_multiplier=3.3271, l2_norm_clip=1.0, examples=rate_examples,
                                     batch_size=64, epochs=5)
    return ChargeInfo(id=1, site=site, session_id=12, request_id=3, schedule=schedule.to_dict(), rounds=3,
                      examples=rate_examples, delta=1e-5, budget_epsilon=10.0, epsilon=4.0, epsilon_rdp=4.357,
                      total_epsilon=5.901, total_epsilon_rdp=6.395, slices_per_patient=slices,
                      created_at=datetime.now(timezone.utc))


def _render(charges: list[ChargeInfo]) -> str:
    out = io.StringIO()
    Console(file=out, width=PIPE_COLUMNS, force_terminal=False).print(ledger_view(charges, []))
    return out.getvalue()


def test_numbers_stay_whole_at_pipe_width_and_no_empty_patient_column() -> None:
    text = _render([_charge("north", 120, None), _charge("south", 75, None)])
    assert "0.5333" in text and "6.395" in text and "3.327" in text  # q = 64/120, never folded over two lines
    assert "patient" not in text


def test_a_declared_slice_count_brings_the_patient_level_column() -> None:
    text = _render([_charge("north", 120, 3), _charge("south", 75, None)])
    assert "patient" in text and "k=3" in text
