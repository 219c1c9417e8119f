import pytest

from oneformore.data import MVTEC_CATEGORIES, PRESETS, VISA_CATEGORIES, get_protocol, parse_protocol


def test_categories_alphabetical():
    assert list(MVTEC_CATEGORIES) == sorted(MVTEC_CATEGORIES) and len(MVTEC_CATEGORIES) == 15
    assert list(VISA_CATEGORIES) == sorted(VISA_CATEGORIES) and len(VISA_CATEGORIES) == 12


@pytest.mark.parametrize(
    "name,sizes",
    [
        ("mvtec-14-1", [14, 1]),
        ("mvtec-10-5", [10, 5]),
        ("mvtec-3x5", [3, 3, 3, 3, 3]),
        ("mvtec-10-1x5", [10, 1, 1, 1, 1, 1]),
        ("visa-11-1", [11, 1]),
        ("visa-8-4", [8, 4]),
        ("visa-8-1x4", [8, 1, 1, 1, 1]),
    ],
)
def test_presets(name, sizes):
    p = PRESETS[name]
    assert [len(t) for t in p.tasks] == sizes
    classes = MVTEC_CATEGORIES if name.startswith("mvtec") else VISA_CATEGORIES
    assert [c for t in p.tasks for c in t] == list(classes)  # alphabetical, each class once


def test_preset_details_and_name_parsing():
    assert PRESETS["mvtec-14-1"].tasks[1] == ("zipper",)
    assert PRESETS["mvtec-10-1x5"].tasks[1:] == (("tile",), ("toothbrush",), ("transistor",), ("wood",), ("zipper",))
    assert PRESETS["visa-11-1"].tasks[1] == ("pipe_fryum",)
    assert PRESETS["visa-8-4"].tasks[1] == ("pcb2", "pcb3", "pcb4", "pipe_fryum")
    assert get_protocol("MVTec 3×5") is PRESETS["mvtec-3x5"]
    assert get_protocol("visa_8-1x4") is PRESETS["visa-8-1x4"]
    with pytest.raises(ValueError, match="unknown protocol 'mvtec-7-8'"):
        get_protocol("mvtec-7-8")


def test_user_sequences_and_seen_sets():
    p = parse_protocol("bottle,magnetic_tile;kolektor")
    assert p.tasks == (("bottle", "magnetic_tile"), ("kolektor",))
    assert p.test_categories(0) == ["bottle", "magnetic_tile"]
    assert p.test_categories(1) == ["bottle", "magnetic_tile", "kolektor"]
    q = get_protocol([["a", "b"], ["c"], "d"])
    assert q.tasks == (("a", "b"), ("c",), ("d",)) and len(q) == 3
    assert PRESETS["mvtec-3x5"].test_categories(2) == list(MVTEC_CATEGORIES[:9])
    with pytest.raises(ValueError, match="empty task"):
        parse_protocol("a;;b")
    with pytest.raises(ValueError, match="more than one task: \\['a'\\]"):
        get_protocol([["a"], ["a", "b"]])
