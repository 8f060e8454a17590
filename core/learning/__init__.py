"""Learning: turning ratings and edits into better adapters, every night.

Modules:
    pairs        feedback -> preference pairs, memory and held-out references (one reader)
    rewards      the hierarchical clinical reward for GRPO
    train        what every trainer shares: hyper-parameters, the policy, saving, log-probs
    dpo          DPO with per-pair weights and a per-pair (critical-aware) beta
    grpo         GRPO under the hierarchical reward, anchored on the reference's own output
    sft_trainer  SFT of a LoRA adapter on serving prompts
    sft          the shared base adapter's SFT run, versioned in the registry
    gate         the promotion gate on a reader's held-out feedback
    nightly      the nightly job: who to train, train, gate, promote, pre-draft
    distributed  rank awareness under ``accelerate launch``

May import: config, errors, util, store, ingest, accounts, clinical, evaluation, adapters,
generation.
"""
