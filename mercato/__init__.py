"""Mercato: a pipeline that turns a commerce platform's event stream into per-merchant metrics."""

__version__ = "0.1.0"
