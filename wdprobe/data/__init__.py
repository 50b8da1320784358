"""Data: WDCT items and their loaders, prompts for each setting, PCT material, paraphrases, pinned downloads."""
