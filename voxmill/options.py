"""Run options: the one serialisable object for how a job reaches the API and where its batches run.

Every entry point takes a :class:`RunOptions`: each flow as its single ``options`` parameter (Prefect shows it
as one form, and a deployment sets it as one mapping), and every CLI command builds one from its flags. A
field left ``None`` falls back to the environment (``VOXMILL_*``, read by :meth:`Settings.from_env` only),
then to the defaults of :mod:`voxmill.settings`. :func:`settings_for` is the one function from options and
environment to :class:`~voxmill.settings.Settings`; the Prefect layer adds only what needs Prefect (a key
from a Secret block, a rate budget in the Prefect API) in ``tasks.settings.resolve_settings``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field

from voxmill.settings import LOCAL_ENGINES, RATE_SCOPES, RUNNERS, LocalEngine, RateScope, RunnerKind, Settings


class RunOptions(BaseModel):
    """How a job talks to the API and where it runs; ``None`` means "from the environment, else the default"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str | None = Field(None, description="API base URL (default VOXMILL_BASE_URL, else the hosted API)")
    requests_per_second: float | None = Field(
        None, gt=0, description="ceiling on requests per second (default VOXMILL_RPS; none: the limit is learned)")
    requests_per_minute: float | None = Field(
        None, gt=0, description="ceiling on requests per minute (default VOXMILL_RPM; none: the limit is learned)")
    max_concurrent: int | None = Field(
        None, ge=1,
        description="ceiling on requests in flight (default VOXMILL_CONCURRENCY, else 1024; the limit is learned)")
    api_key_block: str | None = Field(
        None, description="Prefect Secret block holding the API key (VOXMILL_API_KEY wins over it)")
    rate_scope: RateScope | None = Field(
        None, description="who shares the rate budget: 'machine' (every process here), 'redis' (every worker, "
                          "through Redis at VOXMILL_REDIS_URL) or 'prefect' (every worker of the Prefect API); "
                          "default VOXMILL_RATE_SCOPE, else machine")
    local: bool = Field(False, description="use a local server started for the run (the default with no key)")
    local_engine: LocalEngine = Field("real", description="the local server's engines: real (piper/whisper) or null")
    runner: RunnerKind = Field("thread", description="where batches run: threads, a process pool or Dask workers")
    workers: int = Field(4, ge=1, description="processes or Dask workers; with threads, 4 × this many batches at "
                                              "once in the job's engine")
    dask_address: str | None = Field(
        None, description="with runner 'dask': the scheduler of a cluster started separately (tcp://HOST:8786); "
                          "default: a LocalCluster of `workers` processes")


#: the options of a run that sets nothing (a flow's default parameter)
DEFAULT_OPTIONS = RunOptions()


def settings_for(options: RunOptions, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of a run: the environment (``Settings.from_env``) with what ``options`` sets on top.

    Only the core's part: ``options.api_key_block`` and ``rate_scope="prefect"`` need Prefect and are applied
    by ``tasks.settings.resolve_settings``, which every entry point calls.
    """
    settings = Settings.from_env(environ)
    limit = settings.rate_limit
    settings = settings.with_(rate_limit=replace(
        limit,
        requests_per_second=options.requests_per_second or limit.requests_per_second,
        requests_per_minute=options.requests_per_minute or limit.requests_per_minute,
        max_concurrent=options.max_concurrent or limit.max_concurrent,
        scope=options.rate_scope or limit.scope,
    ))
    return settings.with_(base_url=options.base_url) if options.base_url else settings


__all__ = ["DEFAULT_OPTIONS", "LOCAL_ENGINES", "LocalEngine", "RATE_SCOPES", "RUNNERS", "RunOptions", "RunnerKind",
           "settings_for"]
