"""trigrecon."""
