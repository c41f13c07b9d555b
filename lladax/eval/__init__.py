"""The eval wing: how good is a model.

harness            the lm-evaluation-harness adapter (loglikelihood and generate_until)
instruction_eval   greedy replies to instruction tasks, scored
experiments        the paper's claims at small scale (reversal, scaling, sampler, blocks)
"""
