"""The Generate tab's requests, without a browser (tests/test_app.py drives the page)."""

from __future__ import annotations

from annotation.facs import MEAD_EMOTIONS, load_kb
from tbd.app import AppConfig
from tbd.app_generate import FREE_TEXT, _config, emotion_choices
from tbd_lightning.generate import think


def test_the_emotion_menu_requests_a_compound_expression_by_its_own_aus():
    """Issue 38: the AU table can request a compound expression (Du et al. 2014) that no label names. Picked
    from the menu, Think is given its name as free text and the table gets the compound's own AU set, which
    differs from the prototype of the label its adverb names."""
    kb = load_kb()
    values = [v for _, v in emotion_choices()]
    assert values[: len(MEAD_EMOTIONS)] == list(MEAD_EMOTIONS) and values[-1] == FREE_TEXT
    assert set(values[len(MEAD_EMOTIONS) : -1]) == set(kb.compound_expressions)
    config = AppConfig()
    for name in ("sadly_angry", "happily_surprised", "awed"):
        request = _config(config, None, None, name, 2, "")
        assert (request.emotion, request.text) == ("unknown", name.replace("_", " "))
        aus = {u.au for u in think(request).cot.action_units}
        assert aus == set(kb.compound_expressions[name]), (name, aus)
    assert {u.au for u in think(_config(config, None, None, "angry", 2, "")).cot.action_units} != set(
        kb.compound_expressions["sadly_angry"]
    )
