"""Flow: build, verify and publish a new version of a dataset from its spec (the nightly deployment)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.job import artifact_key
from tasks.settings import flow_settings
from voxmill.dataset import BuildReport, PublishRefused, load_spec
from voxmill.dataset import build_dataset as build_version
from voxmill.options import DEFAULT_OPTIONS, RunOptions


@flow(name="voxmill-dataset-build", log_prints=True, persist_result=True)
def build_dataset(
    spec: str,
    source: str | None = None,
    dest: str | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
    force: bool = False,
    remake_rejected: bool = False,
) -> BuildReport:
    """Build the dataset of the TOML ``spec`` file (``source``/``dest`` override the spec's); only new or
    changed rows are sent. Publishes a verified version and moves ``latest``; a summary artifact per build.
    With no key and no Secret block a local server makes the rows, labelled. A version that fails the spec's
    ``[publish]`` gates is not published and the run fails, naming the gates (``force`` publishes it anyway;
    ``remake_rejected`` makes the rejected rows again once a broken engine is fixed)."""
    dataset = load_spec(spec, source=source, dest=dest)
    refused: PublishRefused | None = None
    with flow_settings(options) as settings:
        try:
            report = build_version(dataset, settings, force=force, remake_rejected=remake_rejected)
        except PublishRefused as exc:
            refused, report = exc, exc.report
    key = artifact_key("dataset", dataset.dest)
    create_table_artifact(key=key, table=report.summary_table(), description=report.headline())
    # the card's tables (per voice/model/language, balance, rejects, duplicates) and links to its plots
    create_markdown_artifact(key=f"{key}-card", markdown=report.card_markdown(),
                             description=f"{dataset.name} {report.version}: the card's tables and plots")
    if refused is not None:
        get_run_logger().error(refused.message)
        raise refused
    get_run_logger().info(report.headline())
    return report
