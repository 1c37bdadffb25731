"""Metrics, the device memory monitor, the per-request record behind access logs, error statistics."""
