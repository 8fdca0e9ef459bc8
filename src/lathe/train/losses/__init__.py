"""Loss functions of the training stages, as pure tensor functions, one module per family.

Every function here takes tensors and numbers and returns tensors: no model, no Trainer,
no config. That keeps each formula in one place, next to its paper, and lets the tests check
it against numbers worked out by hand. The stage modules (sft.py, dpo.py, kto.py, rm.py, ppo.py)
run the forward passes and call these.

- `logps.py`: the log-probability of the learned tokens of each sequence (every stage that scores answers);
- `sft.py`: SFT's reweighted token losses (DFT, ASFT, EAFT), one `SFTLoss` per `use_<name>_loss` flag;
- `preference.py`: DPO's `pref_loss` family (each loss a registered descriptor), BCO's add-on term and KTO;
- `reward.py`: the reward model's pairwise loss;
- `ppo.py`: PPO's advantages, clipped losses and KL controllers.

Why write them rather than import TRL's: TRL keeps these formulas inside its Trainer
classes (DPOTrainer.dpo_loss, KTOTrainer.kto_loss, the PPO loop), several of them in
`trl.experimental`, so using them means adopting their Trainer, their batch layout and their
API churn. The formulas themselves are a few lines each; owning them lets every lathe stage
share one trainer base. Where a choice differs between implementations, the docstring says
which one is taken and why.

Shapes: `B` is the batch, `T` the sequence (or response) length, `V` the vocabulary.
"""
