"""LM Explorer's Qt-free core: model loading, tokenization, instrumented runs, analyses."""
