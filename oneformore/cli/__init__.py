"""The ``oneformore`` command line."""
