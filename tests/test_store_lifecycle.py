"""Request and session life cycles: every transition legal or refused, through the table and the store."""

from __future__ import annotations

import itertools

import pytest

from server.store import Store
from server.store.lifecycle import (
    REQUEST_TRANSITIONS,
    RequestState,
    SessionState,
    check_transition,
)
from server.store.records import parse_request_id
from shared.errors import AuthError, IllegalTransitionError, NotFoundError, StoreError
from tests.conftest_store import running_session

R, S = RequestState, SessionState

LEGAL_REQUEST = {
    (R.PENDING, R.APPROVED),
    (R.PENDING, R.REJECTED),
    (R.PENDING, R.CANCELLED),
    (R.APPROVED, R.RUNNING),
    (R.APPROVED, R.FAILED),
    (R.APPROVED, R.CANCELLED),
    (R.APPROVED, R.INTERRUPTED),
    (R.RUNNING, R.COMPLETED),
    (R.RUNNING, R.FAILED),
    (R.RUNNING, R.CANCELLED),
    (R.RUNNING, R.INTERRUPTED),
    (R.INTERRUPTED, R.PENDING),
    (R.FAILED, R.PENDING),
}
LEGAL_SESSION = {
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.FAILED),
    (S.STARTING, S.CANCELLED),
    (S.STARTING, S.INTERRUPTED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.INTERRUPTED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(RequestState, RequestState)))
def test_request_transition_table(current: RequestState, target: RequestState) -> None:
    assert (target in REQUEST_TRANSITIONS[current]) == ((current, target) in LEGAL_REQUEST)
    if (current, target) in LEGAL_REQUEST:
        check_transition("REQ-1", current, target)
    else:
        with pytest.raises(IllegalTransitionError, match=f"REQ-1: it is {current.value}"):
            check_transition("REQ-1", current, target)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(SessionState, SessionState)))
def test_session_transition_table(current: SessionState, target: SessionState) -> None:
    if (current, target) in LEGAL_SESSION:
        check_transition("session 1", current, target)
    else:
        with pytest.raises(IllegalTransitionError, match=f"session 1: it is {current.value}"):
            check_transition("session 1", current, target)


def test_refusal_reads_naturally_and_hints_next_steps() -> None:
    with pytest.raises(IllegalTransitionError) as caught:
        check_transition("REQ-3", R.REJECTED, R.APPROVED)
    assert str(caught.value) == "cannot approve REQ-3: it is REJECTED"
    assert "final" in caught.value.hint
    with pytest.raises(IllegalTransitionError) as caught:
        check_transition("REQ-3", R.FAILED, R.APPROVED)
    assert "requeue" in caught.value.hint


def test_mixed_enum_kinds_are_refused() -> None:
    with pytest.raises(IllegalTransitionError):
        check_transition("REQ-1", R.PENDING, S.RUNNING)


@pytest.mark.parametrize(
    ("given", "expected"), [(3, 3), ("3", 3), ("REQ-3", 3), ("req-12", 12), (" REQ-7 ", 7)]
)
def test_request_ids_parse(given: int | str, expected: int) -> None:
    assert parse_request_id(given) == expected


@pytest.mark.parametrize("bad", ["REQ-", "three", "REQ-3x", "-1", True])
def test_bad_request_ids_are_not_found(bad: object) -> None:
    with pytest.raises(NotFoundError):
        parse_request_id(bad)  # type: ignore[arg-type]


def test_store_refuses_to_approve_a_rejected_request(
    store: Store, sites: dict[str, str], v0: list
) -> None:
    req = store.submit_request(
        "alpha", rounds=3, local_epochs=1, dp={"target_epsilon": 2.0}, note="hi"
    )
    assert (req.label, req.state, req.dp, req.note) == (
        f"REQ-{req.id}",
        R.PENDING,
        {"target_epsilon": 2.0},
        "hi",
    )
    rejected = store.reject_request(req.label, reason="too many rounds")
    assert (
        rejected.state is R.REJECTED
        and rejected.reason == "too many rounds"
        and rejected.decided_by == "admin"
    )
    with pytest.raises(IllegalTransitionError, match=f"cannot approve {req.label}: it is REJECTED"):
        store.create_session([req.id], config={})
    assert store.get_request(req.id).state is R.REJECTED
    assert store.list_sessions() == []
    [note] = store.notifications("alpha")
    assert note.kind == "rejected" and "too many rounds" in note.message


def test_rejection_needs_a_reason(store: Store, sites: dict[str, str]) -> None:
    req = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    with pytest.raises(StoreError, match="reason"):
        store.reject_request(req.id, reason="  ")
    assert store.get_request(req.id).state is R.PENDING


def test_site_cancels_only_its_own_pending_request(
    store: Store, sites: dict[str, str], v0: list
) -> None:
    mine = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    with pytest.raises(AuthError, match="not a request of site 'beta'"):
        store.cancel_request(mine.id, site="beta")
    assert store.cancel_request(str(mine.id), site="alpha").state is R.CANCELLED
    approved = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    store.create_session([approved.id], config={})
    with pytest.raises(IllegalTransitionError, match="cannot cancel .*: it is APPROVED"):
        store.cancel_request(approved.id, site="alpha")


def test_requests_are_listed_per_site_and_state(store: Store, sites: dict[str, str]) -> None:
    a1 = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    b1 = store.submit_request("beta", rounds=1, local_epochs=1, dp={})
    a2 = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    store.reject_request(a2.id, reason="no")
    assert [r.id for r in store.list_requests(site="alpha")] == [a1.id, a2.id]
    assert [r.id for r in store.list_requests(states=[R.PENDING])] == [a1.id, b1.id]
    assert [r.id for r in store.list_requests(site="beta", states=[R.REJECTED])] == []


def test_submit_validates(store: Store, sites: dict[str, str]) -> None:
    with pytest.raises(StoreError, match="at least 1"):
        store.submit_request("alpha", rounds=0, local_epochs=1, dp={})
    with pytest.raises(NotFoundError, match="no site 'nobody'"):
        store.submit_request("nobody", rounds=1, local_epochs=1, dp={})
    store.disable_site("beta")
    with pytest.raises(AuthError, match="disabled"):
        store.submit_request("beta", rounds=1, local_epochs=1, dp={})


def test_joint_session_approves_all_and_notifies_each_site(
    store: Store, sites: dict[str, str], v0: list
) -> None:
    a = store.submit_request("alpha", rounds=2, local_epochs=1, dp={})
    b = store.submit_request("beta", rounds=2, local_epochs=1, dp={})
    session = store.create_session(
        [a.label, b.id], config={"rounds": 2, "proximal_mu": 0.01}, actor="root"
    )
    assert session.state is S.STARTING and session.request_ids == [a.id, b.id]
    assert session.participants == ["alpha", "beta"] and session.base_version == 0
    assert session.config == {"rounds": 2, "proximal_mu": 0.01}
    for req in (a, b):
        got = store.get_request(req.id)
        assert (got.state, got.session_id, got.decided_by) == (R.APPROVED, session.id, "root")
    for site in ("alpha", "beta"):
        assert [n.kind for n in store.notifications(site)] == ["approved"]
    assert store.notifications("gamma") == []


def test_one_request_per_site_in_a_session(store: Store, sites: dict[str, str], v0: list) -> None:
    first = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    second = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    with pytest.raises(StoreError, match="both from site 'alpha'"):
        store.create_session([first.id, second.id], config={})
    assert store.get_request(first.id).state is R.PENDING


def test_session_runs_and_requests_follow(store: Store, sites: dict[str, str], v0: list) -> None:
    session = running_session(store, "alpha", "beta")
    assert (session.state, session.port, session.pid) == (
        S.RUNNING,
        8080 + session.id,
        1000 + session.id,
    )
    assert session.started_at is not None and session.started_at.tzinfo is not None
    assert {store.get_request(r).state for r in session.request_ids} == {R.RUNNING}
    with pytest.raises(IllegalTransitionError, match="cannot start session"):
        store.mark_session_running(session.id, port=1, pid=1)
    failed = store.finish_session(session.id, state=S.FAILED, reason="client crashed")
    assert (
        failed.state is S.FAILED
        and failed.reason == "client crashed"
        and failed.ended_at is not None
    )
    assert {store.get_request(r).state for r in session.request_ids} == {R.FAILED}
    assert "client crashed" in store.notifications("beta")[-1].message
    with pytest.raises(IllegalTransitionError, match="it is FAILED"):
        store.finish_session(session.id, state=S.COMPLETED)


def test_finish_accepts_only_final_states(store: Store, sites: dict[str, str], v0: list) -> None:
    session = running_session(store, "alpha")
    with pytest.raises(StoreError, match="can be finished as"):
        store.finish_session(session.id, state=S.INTERRUPTED)


def test_rounds_are_upserted(store: Store, sites: dict[str, str], v0: list) -> None:
    session = running_session(store, "alpha")
    store.record_round(session.id, round_number=1, phase="fit", metrics={"loss": 2.0})
    store.record_round(session.id, round_number=1, phase="evaluate", metrics={"accuracy": 0.4})
    store.record_round(
        session.id,
        round_number=1,
        phase="fit",
        metrics={"loss": 1.5},
        per_site={"alpha": {"n": 10}},
    )
    rounds = store.session_rounds(session.id)
    assert [(r.round_number, r.phase, r.metrics) for r in rounds] == [
        (1, "evaluate", {"accuracy": 0.4}),
        (1, "fit", {"loss": 1.5}),
    ]
    assert rounds[1].per_site == {"alpha": {"n": 10}}
    with pytest.raises(StoreError, match="phase"):
        store.record_round(session.id, round_number=2, phase="train", metrics={})
    store.finish_session(session.id, state=S.CANCELLED)
    with pytest.raises(IllegalTransitionError, match="CANCELLED"):
        store.record_round(session.id, round_number=2, phase="fit", metrics={})


def test_session_secrets(store: Store, sites: dict[str, str], v0: list) -> None:
    session = running_session(store, "alpha", "beta")
    alpha, beta = (
        store.session_secret(session.id, "alpha"),
        store.session_secret(session.id, "beta"),
    )
    assert alpha != beta and len(alpha) >= 40
    assert store.verify_session_secret(session.id, "alpha", alpha)
    assert not store.verify_session_secret(session.id, "alpha", beta)
    assert not store.verify_session_secret(session.id, "gamma", alpha)
    with pytest.raises(AuthError, match="not approved for session"):
        store.session_secret(session.id, "gamma")
    store.finish_session(session.id, state=S.CANCELLED)
    assert not store.verify_session_secret(session.id, "alpha", alpha)
    with pytest.raises(AuthError, match="has ended"):
        store.session_secret(session.id, "alpha")


def test_missing_things_are_not_found(store: Store, sites: dict[str, str]) -> None:
    with pytest.raises(NotFoundError, match="REQ-99"):
        store.get_request("REQ-99")
    with pytest.raises(NotFoundError, match="session 7"):
        store.get_session(7)
    with pytest.raises(NotFoundError, match="no model version"):
        store.head()
    req = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    with pytest.raises(NotFoundError, match="no model version"):
        store.create_session([req.id], config={})
