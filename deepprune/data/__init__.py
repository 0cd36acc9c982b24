"""Problem sets, trace corpora, the trace schema and importers."""
