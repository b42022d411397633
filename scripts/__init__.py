"""Command-line helpers for preparing data and certificates (importable so tests drive the same code)."""
