"""Evaluation: the sandboxed executor and pass@k, text metrics, benchmarks, reports."""
