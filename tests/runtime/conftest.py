from __future__ import annotations

import pytest

from tests.export.bundles import IMPOSSIBLE, bundle, exportable_checkpoint


@pytest.fixture(scope="session")
def export_base(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="session")
def exportable_tiny(export_base):
    return exportable_checkpoint(export_base)


@pytest.fixture(scope="session")
def fp32_bundle(export_base):
    return bundle(export_base, "fp32", allow_degraded=False)


@pytest.fixture(scope="session")
def int4_bundle(export_base):
    """INT4, written although it failed a gate no bundle can pass (exact match >= 101 %): flagged degraded."""
    return bundle(export_base, "int4", thresholds=IMPOSSIBLE, allow_degraded=True)
