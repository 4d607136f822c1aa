"""Pure numpy/torch analyses of a Run (no Qt): each panel's heavy lifting, usable from a notebook."""
