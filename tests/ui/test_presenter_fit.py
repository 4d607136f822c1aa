"""Presenter mode fits a 1280 x 720 screen: the prompt bar (the widest fixed row) no longer forces 1,337 px."""

from __future__ import annotations

import pytest

from explorer.ui import theme
from explorer.ui.prompt_bar import PromptBar

pytest.importorskip("pytestqt")


def test_prompt_bar_fits_1280_in_presenter_mode(qtbot):
    theme.apply(presenter=True)
    try:
        bar = PromptBar()
        qtbot.addWidget(bar)
        bar.show()
        assert bar.minimumSizeHint().width() <= 1280 - 16  # the window frame and margins
    finally:
        theme.apply(presenter=False)
