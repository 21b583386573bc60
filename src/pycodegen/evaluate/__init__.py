"""`pycodegen evaluate` and `report`: completion → sandbox job (programs), samples → verdicts → results
(score), report.md and run comparison (report)."""
