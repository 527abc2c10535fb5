"""Training on the target span: SFT and knowledge matching as one `Trainer` base (`trainer`)
whose subclasses override only the loss, over one dataset, collator and `target_logits`
(`targets`)."""
