"""The ``voxmill`` command, one module per command family.

- :mod:`~voxmill.cli.main` — the parser and the job commands (synthesize, transcribe, status, retry-failed,
  estimate, demo, models);
- :mod:`~voxmill.cli.audiobook`, :mod:`~voxmill.cli.dataset`, :mod:`~voxmill.cli.serve`,
  :mod:`~voxmill.cli.deploy` — the other families;
- below them all, :mod:`~voxmill.cli.common` (exit codes, run flags → ``RunOptions``, progress bar) and
  :mod:`~voxmill.cli.prefect_server` (the Prefect API a run owns). No command module imports another.

The CLI sits on top of every layer: it may import ``flows`` and ``tasks``; nothing below imports it.
"""

from voxmill.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
