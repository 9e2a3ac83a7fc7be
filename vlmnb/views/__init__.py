"""What a reader sees: the figure style and figures, the attention explorer, the toy's tables."""
