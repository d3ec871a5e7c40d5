"""Fine-tuning beyond language modelling: classification heads (classify.py)."""
