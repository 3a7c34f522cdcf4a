"""BrainMVP: multi-contrast brain-MRI pre-training (templates, two masked views, InfoNCE) and its fine-tuning."""
