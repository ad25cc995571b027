"""Offline tools run from the CLI (`cvserve models quantize`), never by the server: the
serving path imports nothing from here (tests/test_import_graph.py checks it)."""
