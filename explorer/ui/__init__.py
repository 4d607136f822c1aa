"""LM Explorer's Qt layer: main window, worker thread, shared selection, panels and widgets."""
