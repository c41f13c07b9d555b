"""The data wing: text in, token batches out.

  sources, corpus, textio      where documents come from (embedded text, files, TFDS)
  tokenizer, tokenizer_train   one Tokenizer interface; the default tokenizer trained on first use
  prepared, prepared_writer    the token store: cached token streams and ArrayRecord shards
  pipeline, grain_datasets     grain: pack, shuffle, shard, batch; global batches
  data_config                  the `data` section of a run config (DataConfig)
  chat, instructions, sft      dialogues and the chat template, instruction tasks, SFT batches

Nothing here imports JAX models or samplers (an import-linter contract).
"""
