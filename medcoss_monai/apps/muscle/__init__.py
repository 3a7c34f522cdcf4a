"""MUSCLE: MoCo over X-rays of many body parts, multi-task continual learning, fine-tuning per task."""
