"""Pruning: the one controller (cons@N, DeepPrune, DeepConf, ESC, random, oracle) over any engine, DeepConf's
confidence, the replay engine for recorded traces, the prune stage's simulator and the online comparison."""
