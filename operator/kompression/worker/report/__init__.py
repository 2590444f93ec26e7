"""What the worker tells the world: the live progress reporter and the written report files."""
