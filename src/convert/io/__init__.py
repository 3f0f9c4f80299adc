"""The input/output edge: database URLs and `env:` locations, the run's scratch folder, and write-back of results to files and databases."""
