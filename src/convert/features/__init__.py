"""Features: the as-of grid and labels, the feature catalog, and the point-in-time feature SQL run on DuckDB or Spark."""
