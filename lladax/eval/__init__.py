"""The eval wing: how good is a model.

harness            the lm-evaluation-harness adapter (loglikelihood and generate_until)
instruction_eval   greedy replies to instruction tasks, scored
preference_pairs   on-policy preference pairs: the model's own wrong replies as rejected answers
experiments        the paper's claims at small scale (reversal, scaling, sampler, blocks, vrpo)
"""
