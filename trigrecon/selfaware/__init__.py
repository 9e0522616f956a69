"""Backdoor self-awareness: make a poisoned model articulate its own trigger, then defend with it.

One file per stage (imports are left to the caller: these modules pull in trl/peft):
    task.py          AwarenessTask (what the auditor knows + ground truth for metrics)
    models.py        HF loading (base + merged backdoor adapter), greedy generation, LoRA helpers
    reversal_sft.py  reversal SFT from benign behaviour only
    reward.py        InversionReward: ASR of a candidate on benign prompts + length penalty
    buffer.py        ReplayBuffer: top-N candidates replayed into later GRPO groups
    seeds.py         audit_seeds: an audit's verified candidates as GRPO seeds
    grpo.py          train_awareness: TRL GRPOTrainer (+ replay subclass), LoRA, resumable
    metrics.py       elicitation accuracy, TrainingCurves (steps-to-50%, emergence)
    plots.py         plotly figures of TrainingCurves
    unlearning.py    adversarial unlearning with the recovered triggers
    guardrail.py     inference-time guardrail (model-representation similarity, calibrated)
    scoring.py       candidate scoring table (behavioural + interpretability score)
    pipeline.py      run_selfaware: SFT -> GRPO -> metrics -> unlearning -> guardrail
"""
