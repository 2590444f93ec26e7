"""Object storage: one layer for every URI scheme, its retry policy, and atomic publication."""
