"""Training: the one Lightning loop for every recipe, planner pretraining, LM pretraining from scratch."""
