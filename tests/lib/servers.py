"""Servers a test starts (registries, CDNs, TLS fronts, fleet caches) and
their fixtures: start_or_skip() turns a tool the machine lacks
(dockerreg.ToolMissing) into a skip that says which, and stopped_after() is
the body of every factory fixture of servers: `yield from stopped_after(make)`
gives the test a factory, and whatever it started is stopped after the test."""

import pytest

from dockerreg import ToolMissing


def start_or_skip(make, *args, **kwargs):
    """MAKE(*ARGS, **KWARGS); skips the test if a tool it needs is missing."""
    try:
        return make(*args, **kwargs)
    except ToolMissing as missing:
        pytest.skip(str(missing))


def stopped_after(make, then=None):
    """Yield a factory that calls MAKE through start_or_skip; each server made
    is stopped after the test. THEN(server), if given, is run on each new server
    once it is on that list (a push that fails still leaves it to be stopped)."""
    started = []

    def start(*args, **kwargs):
        server = start_or_skip(make, *args, **kwargs)
        started.append(server)
        if then is not None:
            then(server)
        return server

    yield start
    for server in started:
        server.stop()
