"""The `spark` command line: the application layer, above the library (spark_core) and the
orchestration (flows, tasks); nothing below imports it."""
