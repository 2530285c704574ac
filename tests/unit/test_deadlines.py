"""The deadline sweep: fires what is due (at most one interval late), never what was removed."""

import asyncio

from gateway.deadlines import Deadlines


async def test_due_callbacks_fire_once_and_removed_ones_never() -> None:
    deadlines = Deadlines(interval_s=0.005)
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    deadlines.add(loop.time() + 0.02, lambda: fired.append("soon"))
    gone = deadlines.add(loop.time() + 0.02, lambda: fired.append("removed"))
    deadlines.add(loop.time() + 10, lambda: fired.append("later"))
    deadlines.remove(gone)
    deadlines.remove(gone)  # twice is harmless
    await asyncio.sleep(0.06)
    assert fired == ["soon"] and len(deadlines) == 1
    await deadlines.aclose()
    assert len(deadlines) == 0


async def test_the_sweep_stops_when_nothing_is_armed_and_restarts_on_demand() -> None:
    deadlines = Deadlines(interval_s=0.005)
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    deadlines.add(loop.time(), lambda: fired.append(1))
    await asyncio.sleep(0.03)
    assert fired == [1] and deadlines._task is None
    deadlines.add(loop.time(), lambda: fired.append(2))
    await asyncio.sleep(0.03)
    assert fired == [1, 2]


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    deadlines = Deadlines(interval_s=0.005)
    now = asyncio.get_running_loop().time()
    fired: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    deadlines.add(now, broken)
    deadlines.add(now, lambda: fired.append("ok"))
    deadlines.sweep(now)
    assert fired == ["ok"] and len(deadlines) == 0
    await deadlines.aclose()
