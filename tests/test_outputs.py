"""Tests for Blender output names computed without Blender."""

from __future__ import annotations

from pathlib import Path

import pytest

from flamenco_p2p.errors import InvalidInput
from flamenco_p2p.outputs import (
    format_frame,
    frame_path,
    normalize_path,
    safe_path_component,
    split_output,
    template_warnings,
)

BLEND_DIR = "/proj/shot dir"


@pytest.mark.parametrize(
    ("template", "frame", "expected"),
    [
        ("//render/shot_", 1, "/proj/shot dir/render/shot_0001.png"),
        ("//render/shot_####.png", 42, "/proj/shot dir/render/shot_0042.png"),
        ("//render/shot_#", 42, "/proj/shot dir/render/shot_42.png"),
        ("//render/", 1, "/proj/shot dir/render/0001.png"),
        ("//render/shot_####", -3, "/proj/shot dir/render/shot_-0003.png"),
        ("//render/shot_####", 10000, "/proj/shot dir/render/shot_10000.png"),
        ("//render/shot_", -3, "/proj/shot dir/render/shot_-0003.png"),
        ("//", 7, "/proj/shot dir/0007.png"),
    ],
)
def test_frame_path_required_cases(template: str, frame: int, expected: str) -> None:
    assert frame_path(template, frame, blend_dir=BLEND_DIR) == expected


def test_frame_path_non_ascii_and_spaces() -> None:
    blend_dir = str(Path("/proj/Épisode 01/scène finale.blend").parent)
    result = frame_path("//rendu/scène_###", 5, blend_dir=blend_dir)
    assert result == "/proj/Épisode 01/rendu/scène_005.png"


def test_frame_path_absolute_template_ignores_blend_dir() -> None:
    assert frame_path("/out/x_##", 3, blend_dir=BLEND_DIR) == "/out/x_03.png"
    assert frame_path("/out/x_##", 3) == "/out/x_03.png"


def test_frame_path_relative_without_blend_dir_raises() -> None:
    with pytest.raises(InvalidInput) as caught:
        frame_path("//render/", 1)
    assert "//render/" in str(caught.value)
    assert "blend_dir" in str(caught.value)


def test_frame_path_last_hash_run_in_file_name() -> None:
    result = frame_path("/out/a_##_b_###", 5)
    assert result == "/out/a_##_b_005.png"


def test_frame_path_hash_in_directory_stays() -> None:
    assert frame_path("/out/r##/shot_", 5) == "/out/r##/shot_0005.png"
    assert frame_path("/out/r##/shot_#", 5) == "/out/r##/shot_5.png"


def test_frame_path_digits_appended_after_extension_without_hash() -> None:
    # Blender appends the number to the whole name, then adds the extension.
    assert frame_path("/out/shot.png", 1) == "/out/shot.png0001.png"


def test_frame_path_keeps_matching_extension_any_case() -> None:
    assert frame_path("/out/shot_####.PNG", 1) == "/out/shot_0001.PNG"


def test_frame_path_replaces_other_image_extension() -> None:
    assert frame_path("/out/shot_####.jpg", 1) == "/out/shot_0001.png"
    assert frame_path("/out/shot_####.exr", 1, extension=".jpg") == "/out/shot_0001.jpg"


def test_frame_path_appends_to_unknown_extension() -> None:
    assert frame_path("/out/shot_####.mov", 1) == "/out/shot_0001.mov.png"


def test_frame_path_extension_aliases() -> None:
    assert frame_path("/out/x_#.jpeg", 1, extension=".jpg") == "/out/x_1.jpeg"
    assert frame_path("/out/x_#.tiff", 1, extension=".tif") == "/out/x_1.tiff"


def test_frame_path_strips_trailing_dots_before_extension() -> None:
    assert frame_path("/out/shot_##..", 1) == "/out/shot_01.png"


def test_frame_path_without_extension() -> None:
    assert frame_path("/out/shot_", 1, extension="") == "/out/shot_0001"


def test_frame_path_large_padding() -> None:
    assert frame_path("/out/x_" + "#" * 20, 7) == "/out/x_" + "7".zfill(20) + ".png"


def test_frame_path_normalizes_dots() -> None:
    assert frame_path("//../up/x_", 1, blend_dir=BLEND_DIR) == "/proj/up/x_0001.png"
    assert frame_path("/a/./b/../c//x_", 1) == "/a/c/x_0001.png"
    assert frame_path("/x/../../../q_", 1) == "/q_0001.png"


def test_frame_path_backslashes_are_separators() -> None:
    assert frame_path("//render\\shot_", 1, BLEND_DIR) == (
        "/proj/shot dir/render/shot_0001.png"
    )
    assert frame_path("C:\\render\\x_", 1) == "/c/render/x_0001.png"


def test_frame_path_template_variables() -> None:
    variables = {"blend_name": "scène finale"}
    result = frame_path("//r/{blend_name}_##", 3, BLEND_DIR, variables=variables)
    assert result == "/proj/shot dir/r/scène finale_03.png"
    assert frame_path("/r/{{x}}_#", 3) == "/r/{x}_3.png"


@pytest.mark.parametrize("template", ["/r/{camera}_#", "/r/a}b", "/r/{bad", "/r/{}"])
def test_frame_path_rejects_unknown_template_expression(template: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        frame_path(template, 1)
    assert repr(template) in str(caught.value)


def test_format_frame_matches_c_precision() -> None:
    assert format_frame(-3, 4) == "-0003"
    assert format_frame(10000, 4) == "10000"
    assert format_frame(0, 3) == "000"
    assert format_frame(-12345, 2) == "-12345"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("..", ".."),
        ("../", "../"),
        ("a/..", "."),
        ("a/b/..", "a/"),
        ("a/../..", ".."),
        ("./", "./"),
        ("./x", "x"),
        ("a/.", "a/."),
        ("/..", "/"),
        ("/a/b/../../../c", "/c"),
        ("a//b", "a/b"),
        ("", ""),
        ("//a/./b", "//a/b"),
    ],
)
def test_normalize_path_matches_blender(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


def test_split_output_template(tmp_path: Path) -> None:
    assert split_output("/out/shot_####", str(tmp_path)) == ("/out", "shot_####")


def test_split_output_trailing_slash_is_directory(tmp_path: Path) -> None:
    directory, template = split_output("renders/", str(tmp_path))
    assert directory == str(tmp_path / "renders")
    assert template == ""


def test_split_output_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    assert split_output("frames", str(tmp_path)) == (str(tmp_path / "frames"), "")
    assert split_output(str(tmp_path / "frames" / "."), "/") == (
        str(tmp_path / "frames"),
        "",
    )


def test_split_output_relative_template(tmp_path: Path) -> None:
    directory, template = split_output("out/sub/../x_##", str(tmp_path))
    assert directory == str(tmp_path / "out")
    assert template == "x_##"


def test_split_output_non_ascii(tmp_path: Path) -> None:
    directory, template = split_output("Épisode 01/scène_####", str(tmp_path))
    assert directory == str(tmp_path / "Épisode 01")
    assert template == "scène_####"


def test_split_output_blend_relative(tmp_path: Path) -> None:
    result = split_output("//render/x_", str(tmp_path), blend_dir="/proj")
    assert result == ("/proj/render", "x_")
    with pytest.raises(InvalidInput):
        split_output("//render/x_", str(tmp_path))


def test_split_output_rejects_empty() -> None:
    with pytest.raises(InvalidInput):
        split_output("", "/")


def test_template_warnings_no_hash() -> None:
    warnings = template_warnings("shot_", 3)
    assert len(warnings) == 1
    assert "'shot_'" in warnings[0]
    assert "####" in warnings[0]


def test_template_warnings_short_padding() -> None:
    warnings = template_warnings("shot_##", 4)
    assert len(warnings) == 1
    assert "'shot_##'" in warnings[0]
    assert "####" in warnings[0]


def test_template_warnings_no_hash_and_long_frames() -> None:
    warnings = template_warnings("", 6)
    assert len(warnings) == 2
    assert "######" in warnings[1]


def test_template_warnings_multiple_runs() -> None:
    warnings = template_warnings("a_##_b_####", 4)
    assert len(warnings) == 1
    assert "2 runs" in warnings[0]


def test_template_warnings_good_template() -> None:
    assert template_warnings("shot_####", 4) == []
    assert template_warnings("shot_####", 3) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ('a/b\\c:d*e?f"g<h>i|j\x00k', "a_b_c_d_e_f_g_h_i_j_k"),
        ("scène finale.blend", "scène finale.blend"),
        ("", "_"),
        (".", "_"),
        ("..", "__"),
        ("line\nbreak", "line_break"),
    ],
)
def test_safe_path_component_replaces(name: str, expected: str) -> None:
    assert safe_path_component(name) == expected


def test_safe_path_component_limits_bytes() -> None:
    name = "é" * 300 + ".blend"
    safe = safe_path_component(name)
    assert len(safe.encode()) <= 255
    assert safe.endswith(".blend")
    safe.encode().decode()  # still valid UTF-8


def test_safe_path_component_long_name_without_extension() -> None:
    safe = safe_path_component("€" * 200)
    assert len(safe.encode()) <= 255
    assert set(safe) == {"€"}
