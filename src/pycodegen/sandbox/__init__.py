"""The execution sandbox: a pool of fork servers that runs untrusted programs and decides verdicts
(knows nothing of models or benchmarks)."""
