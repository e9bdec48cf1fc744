"""The scheduler: runs the batch jobs on time, retries them, keeps their history in the store.

:mod:`~mercato.cron` reads five-field cron schedules, :mod:`~mercato.scheduler.jobs`
declares jobs and runs one as a ``mercato`` subprocess, :mod:`~mercato.scheduler.hooks` tells
someone when a job failed for good, :mod:`~mercato.scheduler.scheduler` elects a leader and
decides what runs when (on a :mod:`~mercato.scheduler.clock` that tests replace),
:mod:`~mercato.scheduler.service` runs it as a process, and :mod:`~mercato.scheduler.cli`
holds ``mercato run scheduler`` and the ``mercato jobs`` commands.
Every job is an idempotent CLI command, so Airflow or a Kubernetes CronJob can run the same
jobs instead (see the README).
"""
