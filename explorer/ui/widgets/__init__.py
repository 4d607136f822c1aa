"""Reusable widgets: heatmap (one ImageItem), background jobs."""
