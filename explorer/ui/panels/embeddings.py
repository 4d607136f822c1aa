"""Embedding projections panel: token geometry per layer and across layers, the vocabulary map,
queries & keys, and what RoPE does. Only the visible tab is drawn; the others catch up when shown."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QTabWidget, QVBoxLayout, QWidget

from ..widgets.background import Background
from .base import Panel
from .embeddings_tokens import TokensAtLayerView
from .embeddings_views import QueryKeyView, RopeView, VocabView

HELP = {
    "Tokens at layer": (
        "Each point is one token of the run; its position is the model's hidden state for that token at the chosen "
        "layer (a vector of hidden-size numbers) squeezed to 2-D by PCA: the two directions along which the "
        "states vary most. With \u201cone basis for all layers\u201d the same two directions are used for every "
        "layer, so pressing Play shows how the representations really move as the layers add to them; the red "
        "line is the selected token's path from the embeddings (layer 0) to the last layer. Tokens that end up "
        "close together are represented alike at that depth. Click a point to select the token everywhere."),
    "Vocabulary": (
        "The embedding table gives every token of the vocabulary a vector before any layer runs. Grey points are a "
        "random sample of the table, projected once with PCA (cached on disk); this run's tokens are placed on the "
        "same map. The list gives the selected token's nearest neighbours in the whole table by cosine similarity "
        "(1 = same direction): usually spelling or case variants and related words. For tied models (SmolLM2, "
        "tiny-llama) the output head re-uses this table; for untied models the map shows the output embedding."),
    "Queries & keys": (
        "Attention compares each query with every earlier key by a dot product. Here the selected layer and "
        "head's queries (circles) and keys (triangles) share one PCA, so a student can see which keys a query "
        "lands near. Keys are shaded by the attention the selected query (big red circle) gives them. Queries and "
        "keys often form two separate clouds: only their relative direction matters, which the AttentionViz "
        "option removes by centring each cloud."),
    "RoPE": (
        "Rotary position embeddings rotate each pair of a query's and a key's dimensions by an angle proportional "
        "to the token's position; early pairs turn fast, late pairs slowly (left: angle mod 2\u03c0 per pair and "
        "position). Because query and key are both rotated, their dot product depends only on how far apart they "
        "are (right): this is how the model knows relative positions without a position vector."),
}


class EmbeddingsPanel(Panel):
    title = "Embeddings"
    help_text = ("Where the model places tokens: hidden states at each layer in 2-D (and their paths through the "
                 "layers), the vocabulary's embedding table with nearest neighbours, the selected head's queries and "
                 "keys, and how rotary position embeddings turn them. Each tab has its own explanation.")

    def __init__(self, selection, parent: QWidget | None = None):
        super().__init__(selection, parent)
        self.background = Background(self)
        self.tokens_view = TokensAtLayerView(selection, self.background)
        self.vocab_view = VocabView(selection, self.background)
        self.qk_view = QueryKeyView(selection)
        self.rope_view = RopeView(selection)
        self.views = [self.tokens_view, self.vocab_view, self.qk_view, self.rope_view]
        self.tabs = QTabWidget()
        for name, view in zip(HELP, self.views, strict=True):
            page = QWidget()
            layout = QVBoxLayout(page)
            layout.setContentsMargins(2, 2, 2, 2)
            help_label = QLabel(HELP[name])
            help_label.setWordWrap(True)
            help_label.setStyleSheet("color: palette(placeholder-text); padding: 2px 4px;")
            layout.addWidget(help_label)
            layout.addWidget(view, 1)
            self.tabs.addTab(page, name.replace("&", "&&"))
        self.body.addWidget(self.tabs, 1)
        self._stale = set(range(len(self.views)))
        self.tabs.currentChanged.connect(self._tab_shown)

    def _refresh(self, index: int) -> None:
        if index == self.tabs.currentIndex():
            self._stale.discard(index)
            self._guard(self.views[index].set_run, self.run)
        else:
            self._stale.add(index)

    def _tab_shown(self, index: int) -> None:
        if index in self._stale:
            self._refresh(index)

    def draw_run(self, run) -> None:
        self._stale = set(range(len(self.views)))
        self._refresh(self.tabs.currentIndex())

    def draw_step(self, run, event) -> None:
        self.draw_run(run)

    def apply_theme(self) -> None:
        self.draw_run(self.run)  # point and label colours are baked per draw

    def draw_selection(self, field: str) -> None:
        index = self.tabs.currentIndex()
        if index in self._stale:
            self._refresh(index)
        else:
            self.views[index].on_selection(field)
        others = {i for i in range(len(self.views)) if i != index}
        self._stale |= others  # they redraw with the new selection when shown

    def export_widget(self) -> QWidget:
        return self.tabs.currentWidget()
