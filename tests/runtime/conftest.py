"""The runtime tests use the export tests' session fixtures (one tiny checkpoint, one fp32 and one INT4 bundle)."""

from tests.export.conftest import export_base, exportable_tiny, fp32_bundle, int4_bundle  # noqa: F401
