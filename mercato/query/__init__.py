"""The query side: merchant-scoped reads of rollups as time series in any time zone."""
