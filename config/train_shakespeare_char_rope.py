# Vanilla softmax attention with rotary positions (Su et al. 2021) instead of a learned table.
exec(open(__file__.replace("_rope.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

out_dir = "out-shakespeare-char-rope"
pos_emb = "rope"
