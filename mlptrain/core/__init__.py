"""The maths and the data: the hand-written layer and MLP, datasets as device tensors, augmentation kernels, the
training step and loop, the device, the recipe's extras, generators, memory, torchrun's processes, threads."""
