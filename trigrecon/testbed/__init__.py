"""The real-model testbed: SmolLM2-135M-Instruct (from a PyPI wheel), its SAE and backdoored
organisms in natural English. A client of the toolkit, like `trigrecon.organisms`."""
