"""The shared core of the steering methods: steered forward, losses, orthogonality, readout."""
