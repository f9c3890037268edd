"""Tests for frame spec parsing and formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamenco_p2p.errors import FrameSpecError, InvalidInput
from flamenco_p2p.frames import (
    MAX_FRAME,
    MAX_FRAMES,
    MAX_SPEC_LENGTH,
    MIN_FRAME,
    format_frames,
    parse_frames,
)


def test_parse_frames_simple_range() -> None:
    assert parse_frames("1-10") == list(range(1, 11))


def test_parse_frames_zero_based_range() -> None:
    frames = parse_frames("0-60")
    assert len(frames) == 61
    assert frames[0] == 0
    assert frames[-1] == 60


def test_parse_frames_mixed_parts() -> None:
    frames = parse_frames("1-10,15,20-30")
    assert len(frames) == 22
    assert frames == [*range(1, 11), 15, *range(20, 31)]


def test_parse_frames_step_with_x() -> None:
    assert parse_frames("1-10x3") == [1, 4, 7, 10]


def test_parse_frames_step_of_five() -> None:
    frames = parse_frames("1-100x5")
    assert len(frames) == 20
    assert frames == list(range(1, 97, 5))
    assert frames[-1] == 96


def test_parse_frames_ignores_whitespace() -> None:
    assert parse_frames(" 1 - 10 , 20 ") == [*range(1, 11), 20]


def test_parse_frames_reversed_range_counts_down() -> None:
    assert parse_frames("100-1") == list(range(100, 0, -1))


def test_parse_frames_reversed_range_with_step() -> None:
    assert parse_frames("10-1x3") == [10, 7, 4, 1]


def test_parse_frames_overlap_rendered_once() -> None:
    frames = parse_frames("1-10,5-15")
    assert frames == list(range(1, 16))
    assert len(frames) == len(set(frames))


def test_parse_frames_duplicates_keep_first_position() -> None:
    assert parse_frames("5,1-3,5,2") == [5, 1, 2, 3]


def test_parse_frames_negative_start() -> None:
    frames = parse_frames("-3-3")
    assert frames == [-3, -2, -1, 0, 1, 2, 3]
    assert len(frames) == 7


def test_parse_frames_negative_range_with_step() -> None:
    assert parse_frames("-10--5x2") == [-10, -8, -6]


def test_parse_frames_single_negative_frame() -> None:
    assert parse_frames("-5") == [-5]


def test_parse_frames_colon_syntax() -> None:
    assert parse_frames("1:10:3") == [1, 4, 7, 10]
    assert parse_frames("1:3") == [1, 2, 3]
    assert parse_frames("-2:2:2") == [-2, 0, 2]


def test_parse_frames_dot_dot_syntax() -> None:
    assert parse_frames("1..5") == [1, 2, 3, 4, 5]
    assert parse_frames("5..1x2") == [5, 3, 1]


def test_parse_frames_step_larger_than_range() -> None:
    assert parse_frames("1-3x100") == [1]


@pytest.mark.parametrize(
    ("spec", "part"),
    [
        ("", ""),
        ("   ", "   "),
        ("1-", "1-"),
        ("a-b", "a-b"),
        ("1-10x0", "1-10x0"),
        ("--5", "--5"),
        ("1,,2", ""),
        ("1-10x-1", "1-10x-1"),
        ("1-2-3", "1-2-3"),
        ("1:2:3:4", "1:2:3:4"),
        ("1.5", "1.5"),
        ("1-10,abc", "abc"),
    ],
)
def test_parse_frames_rejects_bad_part(spec: str, part: str) -> None:
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(spec)
    assert caught.value.part == part
    assert repr(part) in str(caught.value)


def test_parse_frames_error_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        parse_frames("x")


def test_parse_frames_rejects_frame_outside_blender_range() -> None:
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(f"0-{MAX_FRAME + 1}")
    assert str(MAX_FRAME + 1) in str(caught.value)
    with pytest.raises(FrameSpecError):
        parse_frames(str(MIN_FRAME - 1))
    with pytest.raises(FrameSpecError):
        parse_frames("9" * 5000)


def test_parse_frames_accepts_blender_range_limits() -> None:
    assert parse_frames(f"{MIN_FRAME},{MAX_FRAME}") == [MIN_FRAME, MAX_FRAME]


def test_parse_frames_rejects_too_many_frames() -> None:
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(f"0-{MAX_FRAMES}")
    message = str(caught.value)
    assert str(MAX_FRAMES + 1) in message
    assert str(MAX_FRAMES) in message


def test_parse_frames_counts_duplicates_toward_limit() -> None:
    with pytest.raises(FrameSpecError) as caught:
        parse_frames("0-999999,0-10")
    assert "1000011" in str(caught.value)


def test_parse_frames_accepts_exactly_the_limit() -> None:
    frames = parse_frames(f"0-{MAX_FRAMES - 1}")
    assert len(frames) == MAX_FRAMES


def test_parse_frames_rejects_long_spec() -> None:
    spec = ",".join(["1"] * (MAX_SPEC_LENGTH // 2 + 1))
    assert len(spec) > MAX_SPEC_LENGTH
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(spec)
    message = str(caught.value)
    assert str(len(spec)) in message
    assert str(MAX_SPEC_LENGTH) in message
    assert len(message) < 500


def test_format_frames_compacts_runs() -> None:
    assert format_frames([*range(1, 11), 15]) == "1-10,15"


def test_format_frames_writes_steps() -> None:
    assert format_frames([1, 4, 7, 10]) == "1-10x3"
    assert format_frames([10, 7, 4, 1]) == "10-1x3"


def test_format_frames_two_frames_with_gap() -> None:
    assert format_frames([1, 5]) == "1,5"


def test_format_frames_negative_frames() -> None:
    assert format_frames([-10, -8, -6]) == "-10--6x2"
    assert format_frames([-3, -2, -1, 0]) == "-3-0"


def test_format_frames_drops_duplicates() -> None:
    assert format_frames([1, 2, 2, 3, 1]) == "1-3"


def test_format_frames_empty() -> None:
    assert format_frames([]) == ""


frame_lists = st.lists(st.integers(min_value=-2000, max_value=2000), max_size=200)


@given(frame_lists.filter(bool))
def test_format_frames_round_trip_keeps_order(frames: list[int]) -> None:
    parsed = parse_frames(format_frames(frames))
    assert parsed == list(dict.fromkeys(frames))
    assert set(parsed) == set(frames)


@given(frame_lists.filter(bool))
def test_format_frames_round_trip_sorted(frames: list[int]) -> None:
    unique_sorted = sorted(set(frames))
    assert parse_frames(format_frames(unique_sorted)) == unique_sorted


@given(
    st.integers(min_value=-5000, max_value=5000),
    st.integers(min_value=-5000, max_value=5000),
    st.integers(min_value=1, max_value=50),
)
def test_parse_frames_range_matches_python_range(
    first: int, last: int, step: int
) -> None:
    expected = (
        list(range(first, last + 1, step))
        if first <= last
        else list(range(first, last - 1, -step))
    )
    assert parse_frames(f"{first}-{last}x{step}") == expected
    assert parse_frames(f"{first}:{last}:{step}") == expected
    assert parse_frames(f" {first} .. {last} x {step} ") == expected


@given(st.lists(st.integers(min_value=-100, max_value=100), min_size=1, max_size=30))
def test_parse_frames_of_single_frames_dedupes(frames: list[int]) -> None:
    spec = ",".join(str(frame) for frame in frames)
    assert parse_frames(spec) == list(dict.fromkeys(frames))
