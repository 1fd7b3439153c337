"""A Dask client for the stages that fan out: the cluster at ``CHURN_DASK_ADDRESS``, else a local one.

Training (``CHURN_TRAINER=dask``) and the feature build (``CHURN_FEATURE_RUNNER=dask``) use the
same cluster the same way; scoring reaches it through prefect-dask (``flows/score.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tasks.core.errors import ChurnError
from tasks.core.settings import Settings

if TYPE_CHECKING:
    from dask.distributed import Client


class DaskClusterError(ChurnError):
    """The Dask cluster cannot be reached or has no workers."""


@contextmanager
def dask_client(settings: Settings, *, connect_timeout: float = 30.0) -> Iterator[Client]:
    """A Dask client: the scheduler at ``settings.dask_address``, else a LocalCluster.

    The LocalCluster runs ``settings.model_threads`` worker processes of one thread each, without
    dashboard, and is closed on exit; a client of an existing cluster is closed, the cluster kept.

    Raises:
        DaskClusterError: the scheduler at ``dask_address`` does not answer within
            ``connect_timeout`` seconds, or the address is malformed.
    """
    from dask.distributed import Client, LocalCluster

    address = settings.dask_address
    if address:
        try:
            client = Client(address, timeout=connect_timeout)
        except (OSError, ValueError) as exc:
            raise DaskClusterError(
                f"cannot reach the Dask scheduler at {address} (CHURN_DASK_ADDRESS) "
                f"within {connect_timeout:g} s: {exc}"
            ) from exc
        with client:
            yield client
        return
    with (
        _quiet_logs("distributed"),
        LocalCluster(
            n_workers=settings.model_threads,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # Without a dashboard the scheduler still serves /health on 8787 by default, and
            # warns when a second cluster finds that port taken: a free local port instead.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextmanager
def _quiet_logs(name: str) -> Iterator[None]:
    """Keep logger ``name`` at WARNING or above for the duration.

    The scheduler and nannies of a LocalCluster live in this process and log every worker start,
    connection and stop at INFO; ``silence_logs`` only quiets Dask's own handler, not the root
    handlers an application (Prefect) installs, to which these records propagate.
    """
    log = logging.getLogger(name)
    level = log.level
    if log.getEffectiveLevel() < logging.WARNING:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)
