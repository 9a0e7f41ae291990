"""Each tray state has its own icon: the butterfly, and a badge whose colour says the state."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtGui import QColor, QImage

from app.ui import icons
from app.ui.menu_model import IconState

ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "icons"


def pixels(image: QImage) -> list[QColor]:
    return [image.pixelColor(x, y) for y in range(image.height()) for x in range(image.width())]


def badge_pixels(image: QImage, color: QColor) -> int:
    size = image.width()
    corner = [image.pixelColor(x, y) for y in range(size // 2, size) for x in range(size // 2, size)]
    return sum(1 for c in corner if abs(c.red() - color.red()) < 12 and abs(c.green() - color.green()) < 12 and abs(c.blue() - color.blue()) < 12)


@pytest.mark.parametrize("state", list(IconState))
def test_every_state_renders_its_badge(qapp, state: IconState) -> None:  # noqa: ANN001 - pytest-qt fixture
    image = icons.render(state, 64).toImage()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image.save(str(ARTIFACTS / f"{state.value}.png"))
    opaque = sum(1 for c in pixels(image) if c.alpha() > 0)
    assert opaque > 64 * 64 * 0.2, "the butterfly is missing"
    for other, color in icons.BADGE_COLORS.items():
        found = badge_pixels(image, color)
        if other is state:
            assert found > 40, f"{state} lacks its {color.name()} badge"
        else:
            assert found < 5, f"{state} shows the badge of {other}"


def test_states_look_different(qapp) -> None:  # noqa: ANN001
    images = {state: icons.render(state, 32).toImage() for state in IconState}
    assert len({bytes(img.constBits()) for img in images.values()}) == len(IconState)
    assert not icons.icon(IconState.WORKING).isNull()
    assert icons.icon(IconState.WORKING).availableSizes()


def test_without_the_svg_asset_the_wings_are_drawn(qapp, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(icons, "_renderer", lambda: None)
    image = icons.render(IconState.IDLE, 64).toImage()
    assert sum(1 for c in pixels(image) if c.alpha() > 0) > 64 * 64 * 0.2
