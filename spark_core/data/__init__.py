"""The run's data: typed Parquet tables and manifests (`store`), row-by-row reading with per-row
errors (`records`), problem sources (`problems`), the solve prompt (`prompts`) and read-only
SQL over the tables (`sql`)."""
