"""The prompt model: briefs in, validated scene prompts out."""
