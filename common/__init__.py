"""Code shared by every phase: configuration, phase plumbing, prompts, data, execution, generation."""
