"""A feature: a look before training: the learning-rate range test and the augmentation preview."""
