"""cmkd's version (read by the build, the provenance records and ``cmkd --version``)."""

__version__ = "0.1.0"
