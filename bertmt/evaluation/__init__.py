"""Metrics, prediction and reports."""
