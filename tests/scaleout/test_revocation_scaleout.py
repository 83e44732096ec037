"""Revocation across real daphne processes on Redis and PostgreSQL: a change made by
any process of the deployment reaches every process's sockets through the layer; a
change written straight into the database is found by each process's sweep."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.scaleout.conftest import FAST, FIXED_PASSWORD, Client, Deployment, run_manage
from tests.scaleout.test_scaleout import notice

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(120)]


async def closed_with(client: Client, timeout: float) -> int | None:
    """The close code once the client's reader ends (the socket closed)."""
    assert client._reader is not None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(client._reader), timeout)
    return client.closed_with


@pytest.mark.parametrize("liveness", [{**FAST, "REVOCATION_SWEEP_INTERVAL": 1}])
async def test_a_deactivation_in_another_process_closes_sockets_in_every_process(
    deployment: Deployment,
) -> None:
    a, b = deployment.servers
    on_a, on_b = await deployment.client(a, 0), await deployment.client(b, 0)
    bob = await deployment.client(b, 1)
    await bob.join("room")
    await on_a.join("room")
    try:
        # A management command: a process of the deployment, with the layer.
        run_manage(
            a.env, "shell", "-c",
            "from django.contrib.auth import get_user_model as g; "
            "u = g().objects.get(username='u0'); u.is_active = False; u.save()",
        )
        started = time.monotonic()
        assert await closed_with(on_a, 5) == 4001
        assert await closed_with(on_b, 5) == 4001
        took = time.monotonic() - started
        await bob.wait_for(notice("USER_DISCONNECTED", on_a.user_id, "room"), 5)
        deployment.database.assert_counts_true()
        print(f"closed in every process {took:.2f} s after the command returned")
    finally:
        deployment.database.query("UPDATE auth_user SET is_active = true WHERE username = 'u0'")


@pytest.mark.parametrize("liveness", [{**FAST, "REVOCATION_SWEEP_INTERVAL": 1}])
async def test_a_password_written_into_the_database_closes_sockets_at_the_sweep(
    deployment: Deployment,
) -> None:
    a, b = deployment.servers
    on_a, on_b = await deployment.client(a, 2), await deployment.client(b, 2)
    other = await deployment.client(b, 3)
    try:
        deployment.database.query(
            "UPDATE auth_user SET password = 'changed-elsewhere' WHERE username = 'u2'"
        )
        assert await closed_with(on_a, 10) == 4001
        assert await closed_with(on_b, 10) == 4001
        assert other.closed_with is None
    finally:
        deployment.database.query(
            "UPDATE auth_user SET password = %s WHERE username = 'u2'", (FIXED_PASSWORD,)
        )
