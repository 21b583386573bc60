"""pycodegen: train, evaluate and serve deep-learning models that write Python code."""

__version__ = "0.1.0"
