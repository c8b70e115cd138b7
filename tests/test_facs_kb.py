import pytest

from annotation.facs import MEAD_EMOTIONS, intensity_value, load_kb
from annotation.regions import region_landmarks
from tbd_core.errors import UserError


def test_prototypes_cover_mead_and_use_known_aus():
    kb = load_kb()
    assert set(kb.emotions) == set(MEAD_EMOTIONS)
    for proto in kb.emotions.values():
        for au in (*proto.core, *proto.optional):
            assert kb.au(au).region in kb.regions
    assert kb.prototype("contempt").unilateral and not kb.prototype("happy").unilateral
    assert set(kb.prototype("happy").core) == {6, 12}


def test_every_region_of_the_kb_has_landmarks():
    kb = load_kb()
    assert set(kb.regions) == set(region_landmarks())


def test_levels_rise_in_intensity_and_errors_are_clear():
    kb = load_kb()
    values = [intensity_value(kb.level_intensity(level)) for level in (1, 2, 3)]
    assert values == sorted(values) and len(set(values)) == 3
    with pytest.raises(UserError, match="unknown emotion 'joyful'"):
        kb.prototype("joyful")
    with pytest.raises(UserError, match="out of range"):
        kb.level_intensity(7)
    with pytest.raises(UserError, match="AU99"):
        kb.au(99)
    assert kb.version.startswith("facs-") and len(kb.version) == 17
