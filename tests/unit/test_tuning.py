"""The daemon's own garbage collection: with the raised thresholds, cycles left by ended campaigns
are collected after enough campaigns ended (or now and then), never when tuning is off."""

from __future__ import annotations

import gc

from sender.tuning import FULL_COLLECTION_AFTER_ENDED, GarbageCollector


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_cycles_left_by_ended_campaigns_are_collected_after_enough_ended() -> None:
    collector = GarbageCollector(enabled=True)
    gc.disable()  # only the collector under test may collect
    try:
        gc.collect()
        _Cycle()  # garbage only a collection can free
        assert any(isinstance(o, _Cycle) for o in gc.get_objects())
        collector.ended = FULL_COLLECTION_AFTER_ENDED - 1
        collector.maybe_collect()
        assert collector.collections == 0 and any(isinstance(o, _Cycle) for o in gc.get_objects())
        collector.ended += 1
        collector.maybe_collect()
        assert collector.collections == 1 and collector.ended == 0
        assert not any(isinstance(o, _Cycle) for o in gc.get_objects())
    finally:
        gc.enable()


def test_nothing_is_collected_when_tuning_is_off() -> None:
    collector = GarbageCollector(enabled=False)
    collector.ended = 10 * FULL_COLLECTION_AFTER_ENDED
    collector.maybe_collect()
    assert collector.collections == 0
