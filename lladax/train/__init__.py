"""The train wing: from a run config to checkpoints.

run_config, config_files   the run config (sections, defaults, checks) and config-file loading
trainer                    TrainState, the jitted train step, FLOPs per token
loop                       the training loop: data, eval, logging, checkpoint cadence, preemption
run_dir, stopping          the run directory (metrics, resume rules) and signal handling
plan, throughput           memory/throughput planning and AOT; MFU measurement
distributed                multi-host initialisation
"""
