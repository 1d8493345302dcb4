"""Recipes: dense / fixed-λ multi-task training, meta-training, fine-tuning, comparison."""
