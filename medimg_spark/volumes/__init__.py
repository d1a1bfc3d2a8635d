"""3-D volumes: series assembly, volume-wise processing and their geometry (no Spark import here)."""
