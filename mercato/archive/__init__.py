"""The archive: every log record, as Parquet files partitioned by event hour, for batch jobs.

:mod:`~mercato.archive.layout` names the files and says which ones readers may use,
:mod:`~mercato.archive.schema` what they hold, :mod:`~mercato.archive.archiver` writes them
from the log, and :mod:`~mercato.archive.compaction` merges an hour's small files.
"""
