"""`humanizer demo`: the whole humanizer pipeline on the embedded model, one stage a job.

settings.py says what the demo takes and the two sizes (imports no MLX); run.py plans the
stages and runs them."""
