"""The store wing: weights and training state on disk.

checkpoint, ckpt_format   Orbax training checkpoints (atomic, async, restore onto any mesh)
convert, safetensors_io   HF safetensors <-> lladax params, streaming, both directions
loading                   `load_model`: a run directory or an HF directory -> (cfg, params, tok)
"""
