"""A run: the trainer, the callbacks contract it reports through, the checkpoint format, the run folder and its
files, every figure, TensorBoard, signals, and --dry-run's plan. Built on core and base; knows no feature."""
