"""The operator console: what operators see of the whole pipeline and the actions they take.

Served by ``mercato run api`` beside the merchant query API, behind the admin token:

- :mod:`~mercato.console.api`: the admin endpoints (``/v1/admin/...``) the console page
  (``/console``, in :mod:`mercato.dashboard`) reads and posts to;
- :mod:`~mercato.console.monitor`: what they report, gathered from the log, the store, the
  archive and the collectors (lag, freshness, archive coverage, ingest rates);
- :mod:`~mercato.console.launcher`: actions run in child processes, and their history;
- :mod:`~mercato.console.actions`: the actions (run a job now, promote, roll back), each the
  library call of the ``mercato`` command of the same name;
- :mod:`~mercato.console.errors`: its errors.
"""
