"""The store wing: weights and training state on disk.

layout                     a run's checkpoints/ directory and its Orbax CheckpointManager
checkpoint, data_state     save / restore a TrainState (atomic, async, restore onto any mesh)
integrity                  checksums, structure and model-field checks, one-line errors
params_checkpoint          params alone: read a run (meta, data position, params), write params
hf_format, convert         the HF LLaDA format (config, names, shapes); streaming HF <-> lladax
safetensors_io             safetensors files: headers, reads, sharded streaming writes
loading                    `load_model`: a run directory or an HF directory -> (cfg, params, tok)
"""
