"""Fill a QTableWidget in one pass: no per-cell re-layout, one column sizing at the end.

A table whose header is in ResizeToContents mode (or that is re-sized after every cell) measures
every visible row again after each setItem: refilling a 270 x 10 head-statistics table made 14.7
million calls into the style and froze the GUI for two minutes. Every table in the panels is filled
through `fill_table`, and `interactive_columns` gives them user-resizable columns.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem

Cell = QTableWidgetItem | str


def interactive_columns(table: QTableWidget, stretch_last: bool = False) -> None:
    """Columns the user can resize; sized to their contents only when `fill_table` runs."""
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.Interactive)
    header.setStretchLastSection(stretch_last)


def fill_table(table: QTableWidget, rows: Sequence[Sequence[Cell]], *, columns: int | None = None,
               resize: bool = True) -> None:
    """Replace the table's rows with `rows` (items or texts) with updates, signals and sorting off,
    then size the columns to their contents once (`resize`)."""
    sorting = table.isSortingEnabled()
    updates = table.updatesEnabled()
    table.setSortingEnabled(False)
    table.setUpdatesEnabled(False)
    blocked = table.blockSignals(True)
    try:
        table.setRowCount(0)  # drop the old items first: replacing them one by one re-measures every row
        if columns is not None:
            table.setColumnCount(columns)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                table.setItem(r, c, cell if isinstance(cell, QTableWidgetItem) else QTableWidgetItem(cell))
    finally:
        table.blockSignals(blocked)
        table.setSortingEnabled(sorting)
        table.setUpdatesEnabled(updates)
    if resize:
        table.resizeColumnsToContents()  # with sorting on, Qt leaves room for the sort arrow
    table.viewport().update()
