"""Dataset builds: a spec → an incremental build → QC as data → a versioned, verified publish.

No Prefect here: ``flows/dataset.py`` wraps :func:`build_dataset` in a flow.
"""

from voxmill.dataset.build import BuildReport, BuildStopped, build_dataset
from voxmill.dataset.gates import PublishRefused
from voxmill.dataset.publish import DatasetStore, PublishError
from voxmill.dataset.spec import DatasetSpec, PublishGates, QcThresholds, load_spec

__all__ = [
    "BuildReport",
    "BuildStopped",
    "DatasetSpec",
    "DatasetStore",
    "PublishError",
    "PublishGates",
    "PublishRefused",
    "QcThresholds",
    "build_dataset",
    "load_spec",
]
