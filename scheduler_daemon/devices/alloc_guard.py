"""Transitional name of ``op_guard.OpGuard`` (the torch device still imports it from here)."""
from scheduler_daemon.devices.op_guard import OpGuard as AllocGuard  # noqa: F401
