"""kernel_mcp.watch.access: single-use tickets, and the grants they are exchanged for."""

from __future__ import annotations

import pytest

from kernel_mcp.watch.access import Grant, Grants, Tickets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_is_good_once() -> None:
    tickets = Tickets()
    ticket = tickets.issue("ada", "s1")
    grant = tickets.redeem(ticket, "s1")
    assert grant is not None and (grant.principal, grant.session_id) == ("ada", "s1")
    assert tickets.redeem(ticket, "s1") is None


def test_a_ticket_expires() -> None:
    clock = Clock()
    tickets = Tickets(ttl=60, clock=clock)
    early, late = tickets.issue(None, "s1"), tickets.issue(None, "s1")
    clock.now += 59.9
    assert tickets.redeem(early, "s1") is not None
    clock.now += 0.1
    assert tickets.redeem(late, "s1") is None


def test_a_ticket_for_another_session_is_refused_and_used_up() -> None:
    tickets = Tickets()
    ticket = tickets.issue("ada", "s1")
    assert tickets.redeem(ticket, "s2") is None
    assert tickets.redeem(ticket, "s1") is None


@pytest.mark.parametrize("ticket", ["", "x", "A" * 43, "\udcff"])
def test_an_unknown_ticket_is_refused(ticket: str) -> None:
    tickets = Tickets()
    tickets.issue("ada", "s1")
    assert tickets.redeem(ticket, "s1") is None


def test_tickets_are_random_and_stored_only_as_hashes() -> None:
    tickets = Tickets()
    issued = {tickets.issue("ada", "s1") for _ in range(100)}
    assert len(issued) == 100 and all(len(t) >= 43 for t in issued)
    stored = repr(tickets._store._entries)
    assert not any(t in stored for t in issued)


def test_the_stores_are_bounded_oldest_first_and_drop_the_expired() -> None:
    clock = Clock()
    tickets = Tickets(capacity=3, clock=clock, ttl=10)
    first, *rest = [tickets.issue(None, "s") for _ in range(4)]
    assert len(tickets) == 3 and tickets.redeem(first, "s") is None
    assert all(tickets.redeem(t, "s") for t in rest)
    tickets.issue(None, "s")
    clock.now += 11
    tickets.issue(None, "s")
    assert len(tickets) == 1


def test_a_grant_lasts_until_it_expires_and_is_not_used_up() -> None:
    clock = Clock()
    grants = Grants(ttl=3600, clock=clock)
    cookie = grants.admit(Grant("ada", "s1", 0))
    for _ in range(3):
        found = grants.lookup(cookie, "s1")
        assert found is not None and found.principal == "ada"
    assert found.expires == 100.0 + 3600
    assert grants.lookup(cookie, "s2") is None
    clock.now += 3600
    assert grants.lookup(cookie, "s1") is None


def test_a_sessions_grants_are_revoked_with_it() -> None:
    grants = Grants()
    mine, other = grants.admit(Grant(None, "s1", 0)), grants.admit(Grant(None, "s2", 0))
    grants.revoke("s1")
    assert grants.lookup(mine, "s1") is None
    assert grants.lookup(other, "s2") is not None
