"""Plotly figures from tables and arrays (no run directories): probe curves, lens, patching, steering."""
