"""Data sets a job names: arrays (calibration, evaluation, training) and text files."""
