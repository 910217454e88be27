"""The CTR reward model: (creative, prompt, audience group, category) -> predicted CTR."""
