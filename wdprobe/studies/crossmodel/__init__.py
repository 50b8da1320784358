"""Cross-model patching study: where a variant's behaviour differs from its reference's."""
