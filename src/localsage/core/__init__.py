"""Foundations: the facts both sides share (the /opt/ml contract, hyperparameters, metric lines, durable
files, process lifetimes, where serve/ lives, debugger tensor and profile names). Imports nothing else of
localsage and no torch."""
