"""Flow: build, verify and publish a new version of a dataset from its spec (the nightly deployment)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from tasks.job import artifact_key
from tasks.settings import flow_settings
from voxmill.dataset import BuildReport, load_spec
from voxmill.dataset import build_dataset as build_version
from voxmill.options import DEFAULT_OPTIONS, RunOptions


@flow(name="voxmill-dataset-build", log_prints=True, persist_result=True)
def build_dataset(
    spec: str,
    source: str | None = None,
    dest: str | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
) -> BuildReport:
    """Build the dataset of the TOML ``spec`` file (``source``/``dest`` override the spec's); only new or
    changed rows are sent. Publishes a verified version and moves ``latest``; a summary artifact per build.
    With no key and no Secret block a local server makes the rows, labelled."""
    dataset = load_spec(spec, source=source, dest=dest)
    with flow_settings(options) as settings:
        report = build_version(dataset, settings)
    create_table_artifact(key=artifact_key("dataset", dataset.dest), table=report.summary_table(),
                          description=report.headline())
    get_run_logger().info(report.headline())
    return report
