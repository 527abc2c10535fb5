"""Training: SFT and knowledge matching as Trainer subclasses overriding only the loss."""
