"""The three stages and the runner that carries records through any of them."""
