"""Timing helpers shared by the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = await awaitable
    return result, time.perf_counter() - start


async def gather_timed(*awaitables: Awaitable[Any]) -> tuple[list[Any], float]:
    start = time.perf_counter()
    results = await asyncio.gather(*awaitables)
    return results, time.perf_counter() - start
