"""Analysis: the analyst report, drift, backtests, descriptive tables of an export and the real-data results table."""
