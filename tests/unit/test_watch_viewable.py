"""kernel_mcp.watch.viewable: what of an output a watcher's page is sent."""

from __future__ import annotations

import base64

from kernel_mcp.watch.viewable import ViewLimits, cap_text, viewable

LIMITS = ViewLimits(max_text_chars=1000, max_image_chars=400)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 50).decode()


def test_a_long_text_keeps_its_beginning_and_end_and_says_how_much_is_left_out() -> None:
    text = "A" * 5000 + "Z" * 5000
    capped = cap_text(text, 900)
    assert capped.startswith("A" * 600) and capped.endswith("Z" * 300)
    assert "[kernel-mcp: 9100 characters not shown here" in capped
    assert cap_text("short", 900) == "short"


def test_streams_keep_their_name_and_capped_text() -> None:
    shown = viewable({"output_type": "stream", "name": "stderr", "text": "x" * 5000}, LIMITS)
    assert shown["name"] == "stderr" and len(shown["text"]) < 1200
    odd = viewable({"output_type": "stream", "name": "evil", "text": ["a", "b"]}, LIMITS)
    assert odd == {"output_type": "stream", "name": "stdout", "text": "ab"}


def test_an_error_carries_its_traceback_as_one_text() -> None:
    shown = viewable(
        {"output_type": "error", "ename": "E", "evalue": "v", "traceback": ["l1", "l2"]}, LIMITS
    )
    assert shown == {"output_type": "error", "ename": "E", "evalue": "v", "traceback": "l1\nl2"}
    broken = viewable({"output_type": "error", "traceback": "not a list"}, LIMITS)
    assert broken["traceback"] == "" and broken["ename"] == ""


def test_a_display_sends_its_richest_representation_and_its_text() -> None:
    data = {"text/plain": "<Figure>", "text/html": "<b>x</b>", "image/png": PNG}
    shown = viewable({"output_type": "display_data", "data": data, "metadata": {}}, LIMITS)
    assert shown["data"] == {"image/png": PNG, "text/plain": "<Figure>"}
    html = viewable({"output_type": "display_data", "data": {"text/html": "<b>x</b>"}}, LIMITS)
    assert html["data"] == {"text/html": "<b>x</b>"}
    result = viewable(
        {"output_type": "execute_result", "data": {"text/plain": "3"}, "execution_count": 7},
        LIMITS,
    )
    assert result == {
        "output_type": "execute_result",
        "data": {"text/plain": "3"},
        "execution_count": 7,
    }


def test_an_image_is_sent_only_as_checked_base64_within_its_cap() -> None:
    wrapped = PNG[:20] + "\n" + PNG[20:]
    ok = viewable({"output_type": "display_data", "data": {"image/png": wrapped}}, LIMITS)
    assert ok["data"] == {"image/png": PNG}
    hostile = '" onerror="alert(1)'
    bad = viewable(
        {"output_type": "display_data", "data": {"image/png": hostile, "text/plain": "fig"}},
        LIMITS,
    )
    assert bad["data"] == {"text/plain": "fig"}
    assert bad["notes"] == ["image/png output not shown (too large, or not base64)"]
    big = viewable({"output_type": "display_data", "data": {"image/jpeg": "A" * 800}}, LIMITS)
    assert big["data"] == {} and "image/jpeg" in big["notes"][0]


def test_javascript_is_sent_as_text_and_unknown_types_are_named() -> None:
    js = viewable(
        {"output_type": "display_data", "data": {"application/javascript": "alert(1)"}}, LIMITS
    )
    assert js["data"] == {"application/javascript": "alert(1)"}
    widget = viewable(
        {"output_type": "display_data", "data": {"application/vnd.jupyter.widget-view+json": {}}},
        LIMITS,
    )
    assert widget["data"] == {}
    assert widget["notes"] == ["output of type application/vnd.jupyter.widget-view+json not shown"]


def test_json_is_sent_as_indented_text_and_list_texts_are_joined() -> None:
    shown = viewable(
        {
            "output_type": "display_data",
            "data": {"application/json": {"a": [1]}, "text/plain": ["a", "b"]},
        },
        LIMITS,
    )
    assert shown["data"] == {"application/json": '{\n "a": [\n  1\n ]\n}', "text/plain": "ab"}


def test_a_displays_id_rides_along_for_its_updates() -> None:
    shown = viewable(
        {
            "output_type": "update_display_data",
            "data": {"text/plain": "50%"},
            "transient": {"display_id": "bar"},
        },
        LIMITS,
    )
    assert shown["output_type"] == "update_display_data" and shown["display_id"] == "bar"


def test_an_output_of_no_known_kind_is_only_named() -> None:
    assert viewable({"output_type": "<script>"}, LIMITS) == {
        "output_type": "unknown",
        "notes": ["an output of kind '<script>'"],
    }
