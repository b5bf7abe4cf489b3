"""Data plane: tensor-parallel-aware building blocks that model families compose."""
