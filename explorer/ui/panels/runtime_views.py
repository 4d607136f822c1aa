"""The Runtime panel's drawn views: a padded batch (one row per prompt, padding and attention mask visible) and a
paged KV cache's block tables (blocks of 16 tokens, shared prefix blocks, the partly filled last blocks).

Both are plain painted widgets (QPainter) sized to their content, for a scroll area; colours come from the plot
style and the Tokens panel's kind colours, so they follow the theme.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QBrush, QColor, QFontMetrics, QPainter, QPen
from PySide6.QtWidgets import QToolTip, QWidget

from ...core.analysis.batching import BatchResult
from ...core.analysis.paged_kv import PagedLayout
from ...core.events import TokenKind
from ...core.labels import readable_label
from .. import plot_style
from .token_colors import KIND_COLORS

CELL_W, MIN_CELL_W, CELL_H, MASK_H, GAP, LABEL_W, HEAD_H = 58, 24, 22, 7, 8, 120, 20
BLOCK_W, BLOCK_H = 74, 30
PAD_TEXT = "pad"
LEGEND_H = 60
LEGEND = ("Rows: the prompts, left-padded to the longest (hatched 'pad' cells) so every row's next token comes from "
          "the last column. The bar under each cell is the attention mask: filled = 1 (a real token), empty = 0 "
          "(padding, never attended to). Position ids count from each row's first real token. Dashed line: end "
          "of the padded prompt; a row that produced its end-of-text token is fed padding until all finish.")


def _ink() -> QColor:
    return plot_style.ink()


def _faint() -> QColor:
    return plot_style.faint()


class BatchGrid(QWidget):
    """A padded batch: row b = prompt b, column t = position in the batch's cache; below each row its mask."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.result: BatchResult | None = None
        self.cell_w = CELL_W
        self.available = 0  # width to fit the columns into (0: full-width cells)
        self.setMouseTracking(True)
        plot_style.follow(self, self.repaint_for_theme)

    def repaint_for_theme(self) -> None:
        self.update()

    def set_result(self, result: BatchResult | None) -> None:
        self.result = result
        self.fit(self.available)

    def fit(self, available: int) -> None:
        """Narrow the cells (down to MIN_CELL_W) so that every column fits `available` pixels when it can."""
        self.available = available
        if self.result is not None and available > LABEL_W:
            cols = self.result.input_ids.shape[1]
            self.cell_w = int(max(MIN_CELL_W, min(CELL_W, (available - LABEL_W - 8) // max(1, cols))))
        self.updateGeometry()
        self.adjustSize()
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        if self.result is None:
            return QSize(400, 80)
        b, t = self.result.input_ids.shape
        return QSize(max(700, LABEL_W + t * self.cell_w + 8), HEAD_H + b * (CELL_H + MASK_H + GAP) + 8 + LEGEND_H)

    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        """(row, column) under a point, or None."""
        if self.result is None or x < LABEL_W or y < HEAD_H:
            return None
        row, col = int((y - HEAD_H) // (CELL_H + MASK_H + GAP)), int((x - LABEL_W) // self.cell_w)
        b, t = self.result.input_ids.shape
        return (row, col) if 0 <= row < b and 0 <= col < t else None

    def describe(self, row: int, col: int) -> str:
        res = self.result
        tid, m = int(res.input_ids[row, col]), int(res.attention_mask[row, col])
        pos = int(res.attention_mask[row, :col + 1].sum()) - 1
        part = "prompt" if col < res.n_prompt else "generated"
        if not m:
            return (f"prompt {row + 1}, column {col}: padding (id {tid}), mask 0: no query attends to it "
                    "and its own output is never read")
        return (f"prompt {row + 1}, column {col}: {part} token {tid} {res.pieces.get(tid, '')!r}, "
                f"mask 1, position id {pos}")

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt override
        cell = self.cell_at(event.position().x(), event.position().y())
        if cell is not None:
            QToolTip.showText(event.globalPosition().toPoint(), self.describe(*cell), self)

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.fillRect(self.rect(), plot_style.background())
        res = self.result
        p.setPen(_ink())
        if res is None:
            p.drawText(self.rect().adjusted(8, 8, -8, -8), Qt.TextWordWrap,
                       "Run a batch: each prompt becomes a row, padded on the left to the longest.")
            return
        fm = QFontMetrics(p.font())
        n_rows, width = res.input_ids.shape
        boundary = LABEL_W + res.n_prompt * self.cell_w
        p.drawText(QRectF(LABEL_W, 0, res.n_prompt * self.cell_w, HEAD_H), Qt.AlignCenter,
                   f"prompt (padded to {res.n_prompt})")
        p.drawText(QRectF(boundary, 0, (width - res.n_prompt) * self.cell_w, HEAD_H), Qt.AlignLeft | Qt.AlignVCenter,
                   "  generated (one column per decode step)")
        prompt_c, gen_c = QColor(KIND_COLORS[TokenKind.PROMPT]), QColor(KIND_COLORS[TokenKind.GENERATED])
        pad_brush = QBrush(_faint(), Qt.BDiagPattern)
        for b in range(n_rows):
            y = HEAD_H + b * (CELL_H + MASK_H + GAP)
            p.setPen(_ink())
            p.drawText(QRectF(0, y, LABEL_W - 6, CELL_H), Qt.AlignRight | Qt.AlignVCenter,
                       f"#{b + 1}  {res.prompt_lengths[b]}+{len(res.generated[b])}")
            for t in range(width):
                x = LABEL_W + t * self.cell_w
                cell = QRectF(x + 1, y, self.cell_w - 2, CELL_H)
                masked = res.attention_mask[b, t] == 0
                if masked:
                    p.fillRect(cell, pad_brush)
                    p.setPen(QPen(_faint()))
                    p.drawRect(cell)
                    p.drawText(cell, Qt.AlignCenter, PAD_TEXT)
                else:
                    p.fillRect(cell, prompt_c if t < res.n_prompt else gen_c)
                    p.setPen(QColor("#202020"))
                    text = readable_label(res.pieces.get(int(res.input_ids[b, t]), ""), width=None, spaces=False)
                    if fm.horizontalAdvance(text) <= cell.width() - 4:
                        p.drawText(cell, Qt.AlignCenter, text)
                    else:  # narrow cells: the piece's start, clipped (an ellipsis would hide it all)
                        p.save()
                        p.setClipRect(cell)
                        p.drawText(cell.adjusted(2, 0, 0, 0), Qt.AlignLeft | Qt.AlignVCenter, text)
                        p.restore()
                mask_rect = QRectF(x + 1, y + CELL_H + 2, self.cell_w - 2, MASK_H - 2)
                if masked:
                    p.setPen(QPen(_faint()))
                    p.setBrush(Qt.NoBrush)
                    p.drawRect(mask_rect)
                else:
                    p.fillRect(mask_rect, _ink())
        bottom = HEAD_H + n_rows * (CELL_H + MASK_H + GAP)
        p.setPen(QPen(_ink(), 2, Qt.DashLine))
        p.drawLine(int(boundary), HEAD_H - 2, int(boundary), bottom)
        p.setPen(_ink())
        viewport = self.parentWidget()  # in a scroll area: wrap the legend to what is on screen
        legend_w = min(self.width(), viewport.width()) if viewport is not None else self.width()
        p.drawText(QRectF(8, bottom + 4, legend_w - 24, LEGEND_H), Qt.TextWordWrap, LEGEND)


def shared_colour(block: int, shared_ids: list[int]) -> QColor:
    """A shared physical block's colour: one Okabe-Ito series colour per shared block, stable within a layout."""
    return QColor(plot_style.series(1 + shared_ids.index(block)))


class BlockTable(QWidget):
    """Each sequence's block table: its logical blocks in order, each the physical block it points at."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.layout_: PagedLayout | None = None
        plot_style.follow(self, self.repaint_for_theme)

    def repaint_for_theme(self) -> None:
        self.update()

    def set_layout(self, layout: PagedLayout | None) -> None:
        self.layout_ = layout
        self.updateGeometry()
        self.adjustSize()
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        lay = self.layout_
        if lay is None:
            return QSize(400, 80)
        widest = max(len(t) for t in lay.tables)
        return QSize(max(LABEL_W + widest * BLOCK_W + 16, 980), HEAD_H + len(lay.tables) * (BLOCK_H + GAP) + 8)

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.fillRect(self.rect(), plot_style.background())
        lay = self.layout_
        p.setPen(_ink())
        if lay is None:
            p.drawText(self.rect().adjusted(8, 8, -8, -8), Qt.TextWordWrap,
                       "Run a batch: its cache is laid out here in blocks of 16 tokens.")
            return
        shared = [i for i, r in enumerate(lay.refs) if r > 1]
        p.drawText(QRectF(LABEL_W, 0, 900, HEAD_H), Qt.AlignLeft | Qt.AlignVCenter,
                   f"logical block 0, 1, 2 \u2026 \u2192 physical block P#  (filled slots / {lay.block_size}); "
                   "coloured = shared by several sequences")
        private = QColor(KIND_COLORS[TokenKind.PROMPT])
        for s, table in enumerate(lay.tables):
            y = HEAD_H + s * (BLOCK_H + GAP)
            p.setPen(_ink())
            p.drawText(QRectF(0, y, LABEL_W - 6, BLOCK_H), Qt.AlignRight | Qt.AlignVCenter,
                       f"#{s + 1}  {lay.seq_lengths[s]} tok")
            for j, block in enumerate(table):
                x = LABEL_W + j * BLOCK_W
                box = QRectF(x + 2, y, BLOCK_W - 4, BLOCK_H)
                frac = lay.fill[block] / lay.block_size
                colour = shared_colour(block, shared) if block in shared else private
                p.fillRect(box, QBrush(_faint(), Qt.BDiagPattern))  # empty slots: hatched
                p.fillRect(QRectF(box.x(), box.y(), box.width() * frac, box.height()), colour)
                p.setPen(QPen(_ink(), 2 if block in shared else 1))
                p.setBrush(Qt.NoBrush)
                p.drawRect(box)
                label = f"P{block}  {lay.fill[block]}/{lay.block_size}"
                if block in shared:
                    label = f"P{block} \u00d7{lay.refs[block]}"
                if frac < 1:  # a partly empty block: the label on a plate that reads over fill and hatching
                    plate = QRectF(p.fontMetrics().boundingRect(label)).adjusted(-3, -1, 3, 1)
                    plate.moveCenter(box.center())
                    p.fillRect(plate, plot_style.fill())
                    p.setPen(_ink())
                else:
                    p.setPen(QColor("#202020"))
                p.drawText(box, Qt.AlignCenter, label)


BATCH_CACHE = "this batch's padded cache ([B, T] per layer)"
RUNS_CACHE = "the runs' own caches (each exactly its length)"


def memory_rows(layout: PagedLayout, padded: int, label: str = BATCH_CACHE) -> list[tuple[str, int]]:
    """(what, bytes) for the memory comparison, largest first."""
    return [(f"contiguous, {layout.max_length:,} tokens reserved per sequence", layout.contiguous_bytes),
            (label, padded),
            ("paged, without prefix sharing", layout.unshared_bytes),
            ("paged, shared prefix blocks", layout.paged_bytes)]


def layout_summary(layout: PagedLayout, padded: int, label: str = BATCH_CACHE) -> str:
    """The paged layout's numbers as HTML (bytes from the model's shapes)."""
    def mib(n: int) -> str:
        return f"{n / 2**20:,.2f} MiB"

    frag = layout.internal_fragmentation
    lines = [f"<b>{len(layout.tables)} sequences, {layout.tokens_stored:,} distinct tokens</b>, "
             f"{layout.bytes_per_token:,} bytes per token (layers \u00d7 KV heads \u00d7 head_dim \u00d7 2 \u00d7 "
             f"dtype bytes)",
             f"{layout.n_blocks} blocks of {layout.block_size} in use ({layout.blocks_unshared} without sharing); "
             f"<b>{layout.shared_blocks} shared</b>, {layout.cow_copies} copied on write",
             f"internal fragmentation: {frag} empty slots in last blocks = {mib(layout.bytes_of(frag))} "
             f"({frag / max(1, layout.n_blocks * layout.block_size):.1%} of the paged cache)"]
    for what, n in memory_rows(layout, padded, label):
        lines.append(f"{what}: <b>{mib(n)}</b>")
    lines.append(f"paged saves <b>{mib(layout.saved_bytes)}</b> "
                 f"({layout.saved_bytes / max(1, layout.contiguous_bytes):.1%}) versus contiguous allocation at "
                 f"max length, and {mib(max(0, padded - layout.paged_bytes))} versus "
                 + ("this padded batch" if label == BATCH_CACHE else "the runs' own caches"))
    return "<br>".join(lines)

