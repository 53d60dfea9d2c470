"""The pipeline's stages, one module each: problems, warmup, rollout, verify, train, recycle,
evaluate, finish (and the side file they share, `samples`). Each is a function of (config, run
directory[, iteration, phase]) that reads what earlier stages wrote, writes its own outputs
atomically, then a manifest (spark_core/rundir.py `run_stage`); a stage whose manifest matches
the config is skipped. The chain that runs them is spark_core/iteration.py."""
