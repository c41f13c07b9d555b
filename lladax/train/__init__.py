"""The train wing: from a run config to checkpoints.

run_config, config_files   the run config (typed sections, defaults, checks), config files
trainer, guard             TrainState, optimizer and schedule, the jitted train step; the NaN /
                           spike guard inside it
curriculum                 block diffusion's block-size curriculum (warmup -> stable -> decay)
loop                       the training loop: steps, eval, logging, checkpoint cadence, preemption
run_setup, run_data        before the first step: checks, restore or init; the run's batches
run_dir, stopping          the run directory (metrics, resume rules) and signal handling
plan, throughput           memory/throughput planning and AOT; MFU measurement
distributed                multi-host initialisation
"""
