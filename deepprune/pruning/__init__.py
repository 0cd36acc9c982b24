"""Online pruning, replayed: greedy clustering, voting, the peers, and the replay simulator."""
