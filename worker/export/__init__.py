"""Exports of the mirror: streaming sources, atomic outputs, and one module per format."""
