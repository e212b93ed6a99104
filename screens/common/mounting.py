"""Mounting and unmounting an adapter on the running server, as the Adapters and Server
screens do it: the HTTP call in an async worker (`screen.run_worker(mount_reported(...))`),
its outcome notified on the screen, then the screen's ServerMonitor refreshed."""

from __future__ import annotations

from engine.serve.client import ServerError
from screens.common.serving import mount_adapter, unmount_adapter


async def mount_reported(screen, name: str, parent: str | None) -> None:
    """Mount `name` (its parent first, when given) on the server `screen.monitor` follows."""
    try:
        done = await mount_adapter(screen.monitor, name, parent)
    except ServerError as e:
        screen.notify(f"mount {name}: {e.message}", severity="error", timeout=8)
        return
    screen.notify(f"mounted {', '.join(done)}", timeout=3)
    screen.monitor.refresh_now()


async def unmount_reported(screen, name: str) -> None:
    try:
        await unmount_adapter(screen.monitor, name)
    except ServerError as e:
        screen.notify(f"unmount {name}: {e.message}", severity="error", timeout=8)
        return
    screen.notify(f"unmounted {name}", timeout=3)
    screen.monitor.refresh_now()
