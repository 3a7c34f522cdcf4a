"""Interleaving of current and buffer batches (pure mechanics: loaders of plain dicts)."""

from collections import Counter

import pytest

from medcoss_monai.buffer.rehearsal_loader import BUFFER_FLAG, SOURCE_KEY, CyclingLoaders, RehearsalLoader


def _loader(name, n):
    return [{"x": f"{name}{i}"} for i in range(n)]


def test_no_buffer_is_the_current_loader():
    loader = RehearsalLoader(_loader("c", 5), {}, modality="ct")
    batches = list(loader)
    assert len(loader) == 5 and [b["x"] for b in batches] == [f"c{i}" for i in range(5)]
    assert all(b[BUFFER_FLAG] is False and b[SOURCE_KEY] == "ct" for b in batches)


def test_buffers_in_proportion_and_single_modality():
    loader = RehearsalLoader(_loader("c", 20), {"report": _loader("r", 4), "xray": _loader("x", 2)}, "ct", ratio=1.0)
    batches = list(loader)
    counts = Counter(b[SOURCE_KEY] for b in batches)
    assert counts == {"ct": 20, "report": 4, "xray": 2} and len(loader) == 26
    for b in batches:
        assert b["x"][0] == {"ct": "c", "report": "r", "xray": "x"}[b[SOURCE_KEY]]
        assert b[BUFFER_FLAG] == (b[SOURCE_KEY] != "ct")
    # current batches keep their order; buffer batches are spread, not all at the end
    assert [b["x"] for b in batches if b[SOURCE_KEY] == "ct"] == [f"c{i}" for i in range(20)]
    positions = [i for i, b in enumerate(batches) if b[BUFFER_FLAG]]
    assert positions != list(range(20, 26))


def test_ratio_scales_and_cycles_small_buffers():
    loader = RehearsalLoader(_loader("c", 10), {"report": _loader("r", 2)}, "ct", ratio=2.5)
    batches = list(loader)
    assert sum(b[BUFFER_FLAG] for b in batches) == 5  # ceil(2.5 * 2), the buffer is cycled
    with pytest.raises(ValueError):
        RehearsalLoader(_loader("c", 1), {}, "ct", ratio=-1)


def test_order_depends_only_on_seed_and_epoch():
    def make():
        return RehearsalLoader(_loader("c", 12), {"report": _loader("r", 3)}, "ct", seed=3)

    a, b = make(), make()
    a.set_epoch(4)
    b.set_epoch(4)
    assert [x[SOURCE_KEY] for x in a] == [x[SOURCE_KEY] for x in b]
    assert make().schedule(1) != make().schedule(2) or make().schedule(1) != make().schedule(3)


def test_ratio_relative_to_the_current_loader():
    """relative_to="current": every earlier modality gets the same share of the stage, whatever its buffer's size."""
    buffers = {"report": _loader("r", 40), "xray": _loader("x", 1)}
    loader = RehearsalLoader(_loader("c", 50), buffers, "ct", ratio=0.2, relative_to="current")
    assert loader.buffer_counts() == {"report": 10, "xray": 10}
    counts = Counter(b[SOURCE_KEY] for b in loader)
    assert counts == {"ct": 50, "report": 10, "xray": 10}
    with pytest.raises(ValueError, match="relative_to"):
        RehearsalLoader(_loader("c", 1), {}, "ct", relative_to="both")


def test_cycling_loaders_start_again_when_exhausted_and_after_restart():
    """Mechanics: per key, a loader runs to its end, then from its start; restart begins every key anew."""
    loaders = CyclingLoaders({"a": [1, 2, 3], "b": [10, 20]})
    assert [loaders.next("a") for _ in range(5)] == [1, 2, 3, 1, 2]
    assert [loaders.next("b") for _ in range(3)] == [10, 20, 10]
    loaders.restart()
    assert [loaders.next("a"), loaders.next("b")] == [1, 10]
    with pytest.raises(KeyError):
        loaders.next("c")
