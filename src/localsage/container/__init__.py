"""Container side: what runs inside the training image under /opt/ml — the image's `train` (built-in trainer
or the user's script in script mode), its data pipeline, model, checkpoints, the smdebug hook and profiler,
and the exported model folder. Imports core and the debugger's rules only, never host code."""
