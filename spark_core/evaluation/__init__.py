"""Held-out evaluation: policy accuracy, the judge on a labelled set, reflection and test-time
scaling (`evaluate`), and `spark eval` / `spark judge-eval` on a checkpoint (`evaluate_file`)."""
