"""Rotary positions (Su et al. 2021) instead of a learned table: nothing else to tune."""
pos_emb = "rope"
