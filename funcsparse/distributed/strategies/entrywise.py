"""Sharded strategies of the methods that rank single entries: Magnitude, Movement, Random,
GlobalMagnitude (selection through :mod:`funcsparse.distributed.select`)."""

from __future__ import annotations
