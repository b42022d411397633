"""The server's privacy ledger: per site, the DP schedules it approved and sent, never the site's word.

At approval the session manager decides each site's ``DpSchedule``; :meth:`create_session_charged`
charges each site's whole session (``rounds`` runs of its schedule) in the same transaction that
creates the session, after checking that the composition with every earlier charge of that site
stays within its effective budget: the lower of the site's own declared budget and the admin's
enrolment budget (the smaller delta too). A session is charged in full at approval, so a session
that fails early stays counted: the ledger can only overstate what a site spent.

Requests are checked when they arrive (:meth:`check_request_privacy`): a request without noise
needs the admin's ``allow_no_dp`` grant, and every delta must be at most 1/(10 n) for the count
the site declared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.store.models import FlSession, PrivacyCharge, Site, utcnow
from server.store.records import ChargeInfo, PlannedCharge, SessionInfo, request_label
from server.store.rows import request_row, site_row
from server.store.sessions import SessionStore
from shared.errors import PrivacyBudgetExceeded, StoreError
from shared.privacy_accounting import (
    PrivacySpend,
    check_delta,
    compose,
    event_from_json,
    event_to_json,
    spend,
)


@dataclass(frozen=True)
class Budget:
    """A site's effective budget: the lower of its own (declared) and the admin's (enrolment)."""

    epsilon: float
    delta: float
    site_epsilon: float | None
    enrolment_epsilon: float

    def describe(self) -> str:
        own = "none declared" if self.site_epsilon is None else f"{self.site_epsilon:g}"
        return (f"effective budget epsilon {self.epsilon:g} at delta {self.delta:g} (the lower of the "
                f"site's {own} and the enrolment budget {self.enrolment_epsilon:g})")


def effective_budget(site: Site, declaration: dict[str, Any]) -> Budget:
    site_epsilon = declaration.get("budget_epsilon")
    site_delta = declaration.get("budget_delta")
    return Budget(
        epsilon=min(site.budget_epsilon, float(site_epsilon)) if site_epsilon else site.budget_epsilon,
        delta=min(site.budget_delta, float(site_delta)) if site_delta else site.budget_delta,
        site_epsilon=float(site_epsilon) if site_epsilon else None,
        enrolment_epsilon=site.budget_epsilon,
    )


class PrivacyLedgerStore(SessionStore):
    """Charges per site, checked against the effective budget at approval (sessions are created here)."""

    def check_request_privacy(self, site: str, dp: dict[str, Any], declaration: dict[str, Any] | None) -> None:
        """Refuse a request the server would never approve: no DP without the grant, delta above 1/(10 n)."""
        with self._read() as session:
            row = site_row(session, site)
            if dp.get("noise_multiplier") == 0 and not row.allow_no_dp:
                raise PrivacyBudgetExceeded(
                    f"site '{site}' may not train without noise: the admin did not enrol it with allow_no_dp",
                    hint="Ask for a noise multiplier above 0 or a target epsilon.",
                )
        if declaration:
            examples = int(declaration["examples"])
            check_delta(float(dp["delta"]), examples, what="the request's delta")
            check_delta(float(declaration["budget_delta"]), examples, what="the site's budget delta")

    def site_budget(self, site: str, declaration: dict[str, Any]) -> Budget:
        with self._read() as session:
            return effective_budget(site_row(session, site), declaration)

    def create_session_charged(
        self, request_ids: Iterable[int | str], plans: list[PlannedCharge], *, config: dict[str, Any],
        actor: str = "admin",
    ) -> SessionInfo:
        """Create the session and charge every site's plan in one transaction, or refuse it all."""
        return self.create_session(request_ids, config=config, actor=actor,
                                   before_commit=lambda session, fl: _charge_all(session, fl, plans))

    def privacy_charges(self, *, site: str | None = None, session_id: int | None = None) -> list[ChargeInfo]:
        """The ledger, oldest first, optionally of one site or one session."""
        query = select(PrivacyCharge).order_by(PrivacyCharge.id)
        if site is not None:
            query = query.where(PrivacyCharge.site == site)
        if session_id is not None:
            query = query.where(PrivacyCharge.session_id == session_id)
        with self._read() as session:
            return [_charge_info(row) for row in session.scalars(query)]


def _site_charges(session: Session, site: str) -> list[PrivacyCharge]:
    return list(session.scalars(select(PrivacyCharge).where(PrivacyCharge.site == site).order_by(PrivacyCharge.id)))


def _charge_all(session: Session, fl: FlSession, plans: list[PlannedCharge]) -> None:
    for plan in plans:
        _charge(session, fl, plan)


def _charge(session: Session, fl: FlSession, plan: PlannedCharge) -> None:
    site = site_row(session, plan.site)
    request = request_row(session, plan.request_id)
    if request.site != plan.site:
        raise StoreError(f"{request_label(request.id)} is not a request of site '{plan.site}'")
    budget = effective_budget(site, request.declaration)
    previous = [event_from_json(row.event_json) for row in _site_charges(session, plan.site)]
    event = plan.schedule.session_event(plan.rounds)
    alone, total = spend(event, budget.delta), spend(compose([*previous, event]), budget.delta)
    if math.isinf(alone.epsilon) and not site.allow_no_dp:
        raise PrivacyBudgetExceeded(f"site '{plan.site}' may not train without noise (not enrolled with allow_no_dp)")
    if not math.isinf(alone.epsilon) and total.epsilon > budget.epsilon:
        raise PrivacyBudgetExceeded(_refusal(plan, budget, alone, total, previous_spent=bool(previous)))
    session.add(PrivacyCharge(
        site=plan.site, session_id=fl.id, request_id=plan.request_id, schedule=plan.schedule.to_dict(),
        rounds=plan.rounds, examples=plan.examples, event_json=event_to_json(event), delta=budget.delta,
        budget_epsilon=budget.epsilon, epsilon=_finite(alone.epsilon), epsilon_rdp=_finite(alone.epsilon_rdp),
        total_epsilon=_finite(total.epsilon), total_epsilon_rdp=_finite(total.epsilon_rdp),
        slices_per_patient=request.declaration.get("slices_per_patient"), created_at=utcnow(),
    ))


def _refusal(plan: PlannedCharge, budget: Budget, alone: PrivacySpend, total: PrivacySpend, *,
             previous_spent: bool) -> str:
    s = plan.schedule
    before = "nothing spent before" if not previous_spent else "on top of what it spent before"
    return (f"approval refused: site '{plan.site}' would reach epsilon {total.epsilon:.3f} (PLD at delta "
            f"{budget.delta:g}; RDP {total.epsilon_rdp:.3f}), {budget.describe()}. This session alone: epsilon "
            f"{alone.epsilon:.3f} for {plan.rounds} round(s) of sigma {s.noise_multiplier:.3f}, q {s.sampling_rate:.4f}, "
            f"{s.steps} steps, {before}")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _charge_info(row: PrivacyCharge) -> ChargeInfo:
    return ChargeInfo(
        id=row.id, site=row.site, session_id=row.session_id, request_id=row.request_id,
        schedule=dict(row.schedule), rounds=row.rounds, examples=row.examples, delta=row.delta,
        budget_epsilon=row.budget_epsilon, epsilon=row.epsilon, epsilon_rdp=row.epsilon_rdp,
        total_epsilon=row.total_epsilon, total_epsilon_rdp=row.total_epsilon_rdp,
        slices_per_patient=row.slices_per_patient, created_at=row.created_at, event=event_from_json(row.event_json),
    )
