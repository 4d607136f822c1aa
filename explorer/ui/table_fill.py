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


def append_rows(table: QTableWidget, rows: Sequence[Sequence[Cell]], *, resize: bool = False,
                sort: bool = True) -> None:
    """Add `rows` at the end with updates, signals and sorting off (a chunk of a progressive fill: a long table
    filled a few rows per event-loop turn never blocks the GUI thread); `resize` sizes the columns to what is
    in the table now, `sort` turns the table's sorting back on (when it was on) after this chunk."""
    sorting = table.isSortingEnabled() or bool(table.property("sort_after_fill"))
    updates = table.updatesEnabled()
    table.setSortingEnabled(False)
    table.setProperty("sort_after_fill", sorting and not sort)  # sort once, after the last chunk
    table.setUpdatesEnabled(False)
    blocked = table.blockSignals(True)
    try:
        first = table.rowCount()
        table.setRowCount(first + len(rows))
        for r, row in enumerate(rows, first):
            for c, cell in enumerate(row):
                table.setItem(r, c, cell if isinstance(cell, QTableWidgetItem) else QTableWidgetItem(cell))
    finally:
        table.blockSignals(blocked)
        table.setUpdatesEnabled(updates)
    if sort and sorting:
        table.setSortingEnabled(True)
    if resize:
        table.resizeColumnsToContents()
    table.viewport().update()
