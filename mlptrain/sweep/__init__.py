"""A feature: sweeps on Optuna: the sweep file, the folder and its manifest, starting and joining, the study and
its workers, and the table of trials. No torch or optuna until a sweep runs."""
