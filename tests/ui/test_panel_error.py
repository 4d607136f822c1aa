"""Panel.error: the public, read-only way to read what a panel shows when an update fails."""

from __future__ import annotations

import pytest

from explorer.ui.panels.base import Panel


class _Flaky(Panel):
    fail = True

    def draw_run(self, run) -> None:
        if self.fail:
            raise ValueError("boom")


def test_error_is_none_until_an_update_fails_and_clears_when_a_redraw_succeeds(make_panel):
    panel, _ = make_panel(_Flaky, show=False)  # not on screen: the error is still readable
    assert panel.error is None
    panel.set_run(None)
    assert "ValueError: boom" in panel.error
    panel.fail = False
    panel.set_run(None)
    assert panel.error is None


def test_error_is_read_only(make_panel):
    panel, _ = make_panel(_Flaky, show=False)
    with pytest.raises(AttributeError):
        panel.error = "nothing"
