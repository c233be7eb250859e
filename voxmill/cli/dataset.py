"""``voxmill dataset build|list|export``: dataset builds from the command line.

``build`` runs the build in this process (the Prefect flow ``flows/dataset.py:build_dataset`` is the same
build, for the scheduled deployment). With no ``VOXMILL_API_KEY`` it starts a local server, as
``voxmill synthesize`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voxmill.cli.common import EXIT_OK, add_run_options, announce, run_options
from voxmill.dataset.build import build_dataset
from voxmill.dataset.export import EXPORT_FORMATS, export_version
from voxmill.dataset.publish import DatasetStore
from voxmill.dataset.spec import load_spec


def add_dataset_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dataset`` and its sub-commands to the ``voxmill`` parser."""
    parser = subparsers.add_parser("dataset", help="versioned dataset builds: build, list, export")
    sub = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="build, verify and publish a new version from a spec (TOML)")
    build.add_argument("spec", type=Path, help="the dataset spec, e.g. manifests/dataset.example.toml")
    build.add_argument("--source", help="override the spec's source (manifest path/URL, or audio folder/glob)")
    build.add_argument("--dest", help="override the spec's destination (local folder or fsspec URL)")
    add_run_options(build, runner=False)
    build.set_defaults(handler=_cmd_build)

    listing = sub.add_parser("list", help="the versions at a destination: counts, hours, what changed")
    listing.add_argument("dest", help="the destination (local folder or fsspec URL)")
    listing.set_defaults(handler=_cmd_list)

    export = sub.add_parser("export", help="write a version as NeMo or lhotse manifests (+ audio files)")
    export.add_argument("dest", help="the destination (local folder or fsspec URL)")
    export.add_argument("--format", choices=EXPORT_FORMATS, required=True, dest="export_format")
    export.add_argument("-o", "--out", type=Path, required=True, help="folder for the manifests and audio")
    export.add_argument("--version", dest="version_id", help="version id (default: latest)")
    export.set_defaults(handler=_cmd_export)


def _cmd_build(args: argparse.Namespace) -> int:
    from tasks.settings import run_settings

    spec = load_spec(args.spec, source=args.source, dest=args.dest)
    with run_settings(run_options(args), announce=announce) as settings:
        report = build_dataset(spec, settings)
    print(report.headline())
    if report.published:
        print(f"published: {DatasetStore(spec.dest).url(report.version)} (latest)")
    if report.removed_versions:
        print(f"retention removed: {', '.join(report.removed_versions)}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    store = DatasetStore(args.dest)
    ids = store.version_ids()
    if not ids:
        print(f"{args.dest}: no published version", file=sys.stderr)
        return 1
    latest = store.latest_id()
    print(f"{'version':<26} {'rows':>7} {'rejected':>8} {'hours':>8}  {'+added ~changed -removed':<26} billed")
    for version_id in ids:
        m = store.manifest(version_id)
        mark = "*" if version_id == latest else " "
        diff = f"+{m.diff.added} ~{m.diff.changed} -{m.diff.removed}"
        print(f"{mark}{version_id:<25} {m.rows:>7} {m.rejected:>8} {m.hours:>8.3f}  {diff:<26} {m.billed_requests}")
    print("* latest")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    result = export_version(args.dest, args.out, args.export_format, version_id=args.version_id)
    print(f"{result.rows} rows; manifests: {', '.join(str(f) for f in result.files)}; audio: {result.audio_dir}")
    return 0


__all__ = ["add_dataset_parser"]
