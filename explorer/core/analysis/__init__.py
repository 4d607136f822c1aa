"""Analyses behind the panels (no Qt), usable from a notebook.

Most are pure numpy/torch functions of a Run (its captured arrays): attention, align, depth,
head_search, kv, massive, patching, projection, rope, tokenizer_compare.

Three need the model itself, not only a Run, and must be called where the model may be used
(never beside a running job on another thread):
    sweep           runs the model again for every head/block ablation (`head_sweep`)
    eviction        runs the model again under each KV eviction policy (`eviction_what_if`)
    depth_attention reads layer weights from the loaded model (`depth_weights`), then works on the Run
"""
