"""A secure session end to end: real ``fl-client train`` processes (TensorFlow, DP), identity keys
registered over the request socket, tickets with the peers' keys, signed key exchange, masked
updates and masked validation metrics."""

from __future__ import annotations

import pytest

from client.menu.actions import register_identity
from client.site_profile import load_profile
from server.sessions.manager import ApprovalOptions
from server.store.lifecycle import SessionState
from tests.test_federation import SITES, Federation, _finish, federation  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

SECURE = ApprovalOptions(rounds=1, local_epochs=1, batch_size=8, learning_rate=0.1, join_timeout_s=180,
                         secure_aggregation=True)


def test_sites_with_registered_keys_train_a_secure_session(federation: Federation) -> None:  # noqa: F811
    for site in SITES:
        register_identity(load_profile(federation.settings, site))
    requests = {site: federation.request(site, rounds=1) for site in SITES}
    trainers = [federation.train(site, rid) for site, rid in requests.items()]
    session = federation.manager.approve(list(requests.values()), SECURE)
    final = federation.manager.wait(session.id, timeout_s=300)
    _finish(trainers)

    assert final.state == SessionState.COMPLETED, final.reason
    assert session.config["secure_aggregation"] is True
    version = federation.store.get_version(final.version_number)
    assert version.participants == sorted(SITES)
    evaluated = {r.phase: r for r in federation.store.session_rounds(session.id)}["evaluate"]
    assert evaluated.per_site == {} and evaluated.metrics["secure_aggregation"] is True
    assert 0.0 <= evaluated.metrics["accuracy"] <= 1.0 and evaluated.metrics["examples"] > 0
    for site in SITES:  # each site pinned the other's identity key on first use
        assert load_profile(federation.settings, site).peer_keys_path.is_file()
